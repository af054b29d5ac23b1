"""The launcher process: SIGTERM leaves no rank behind; a live run's directory is refused."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nemo_gift.launcher.process import RunDirBusy, RunDirLock

REPO = Path(__file__).resolve().parents[3]


def _pids_with(fragment: str) -> set[int]:
    """Live (non-zombie) processes whose command line contains ``fragment``."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if fragment in cmd and state != "Z":
            out.add(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="ignore")
    except OSError:
        return ""


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_sigterm_to_the_launcher_leaves_no_rank(tmp_path):
    """Two ranks through torchrun; SIGTERM the launcher while they start; none outlives it."""
    run_dir = tmp_path / "run"
    launcher = subprocess.Popen(
        [sys.executable, str(REPO / "launcher" / "run.py"), "conf=gift_tiny", f"run_dir={run_dir}",
         "cluster.tasks_per_node=2", "sft.cache_dir=null", "logging.progress_bar=false"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        config = str(run_dir / "config.yaml")

        def ranks():  # the two workers torchrun started (exec'ed: their own command line)
            found = {p for p in _pids_with(config) if _cmdline(p).split()[1:3] == ["-m", "nemo_gift.train"]
                     or " -u -m nemo_gift.train " in _cmdline(p)}
            return found if len(found) == 2 else None

        assert len(_wait_for(ranks, 300, "torchrun's 2 ranks")) == 2
        launcher.send_signal(signal.SIGTERM)
        rc = launcher.wait(timeout=120)
        assert rc == 128 + signal.SIGTERM, launcher.stderr.read().decode()[-2000:]
        assert not _pids_with(config), "a rank outlived the launcher"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        for pid in _pids_with(str(run_dir)):
            os.kill(pid, signal.SIGKILL)


def test_an_orphaned_grandchild_is_swept(tmp_path):
    """A rank whose parent dies first is re-parented to the launcher (subreaper) and stopped;
    the launcher's other children are left alone. Run in a fresh process, as the launcher is."""
    marker = tmp_path / "orphan-marker"
    code = f"""
import os, subprocess, sys
from nemo_gift.launcher.process import run_ranks, _children
bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
rank = "import subprocess,sys; subprocess.Popen([sys.executable,'-c','import time; time.sleep(600)','{marker}'])"
rc = run_ranks([sys.executable, "-c", rank], dict(os.environ), grace_s=5)
print(rc, bystander.poll() is None and bystander.pid in _children(os.getpid()))
bystander.kill()
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["0", "True"], out.stderr[-2000:]
    assert not _pids_with(str(marker))


def test_second_launch_into_a_live_run_dir_is_refused_naming_the_pid(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from nemo_gift.launcher.process import RunDirLock; "
         f"RunDirLock({str(run_dir)!r}).acquire(); print('locked', flush=True); time.sleep(120)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = subprocess.run(
            [sys.executable, str(REPO / "launcher" / "run.py"), "conf=gift_tiny", f"run_dir={run_dir}"],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 2
        assert f"is in use by a live run (PID {holder.pid} on " in out.stderr, out.stderr
        assert not (run_dir / "config.yaml").exists()  # the live run's config is left alone
    finally:
        holder.kill()
        holder.wait()
    with RunDirLock(run_dir):  # released when its holder died
        with pytest.raises(RunDirBusy, match=f"PID {os.getpid()} "):
            RunDirLock(run_dir).acquire()
