"""batchd as PID 1 of a PID namespace, stopped like a container: SIGKILL of PID 1, again and again.

``unshare --pid --fork --mount --mount-proc`` makes batchd PID 1 of a new
namespace (root only). SIGKILL of that PID 1 kills everything in the namespace
at once, runner included, as a container stop does, and every start gets pid 1
again: whatever batchd keys on its pid alone (temp file names, lock contents)
meets what the killed start left behind (NOTES.md "PID namespaces").

Half of the kills land while a runner sleeps; the other half inside a state
write (batchd frozen with SIGSTOP at random instants until it holds a temp file
of the state dir open), which is what leaves a temp file behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Daemon

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a PID namespace needs root and unshare(1)",
)

CYCLES = 10
UNSHARE = ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]
FEATURES = 16


def start_as_pid1(d: Daemon) -> int:
    """Start ``d`` as PID 1 of a new PID namespace; its pid as seen from here, once ready."""
    with open(d.stderr_path, "ab") as err:
        # --kill-child: if the test kills unshare (teardown), the namespace goes too.
        d.proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-m", "batchd", "--backend", d.backend],
            env=d.env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    d.wait_ready()
    assert d.status()["daemon"]["pid"] == 1
    unshare = d.proc.pid
    return int(d.wait_for(lambda: child_of(unshare), what="the namespace's PID 1"))


def stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (state first); [] when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return []
    return stat[stat.rfind(b")") + 2 :].split()


def child_of(parent: int) -> int | None:
    """The (only) child process of ``parent``, or None."""
    with os.scandir("/proc") as entries:
        pids = [int(e.name) for e in entries if e.name.isdigit()]
    return next((pid for pid in pids if stat_fields(pid)[1:2] == [str(parent).encode()]), None)


def new_running_run(d: Daemon, before: frozenset[str]) -> dict[str, Any] | None:
    """A runner started since ``before`` (the run ids seen then) and running now, once a
    feature has ended since ``before`` too (so every cycle makes progress)."""
    runs = [r for r in d.agent_runs() if r["run_id"] not in before]
    ended = {r["run_id"] for r in runs if r["event"] == "end"}
    running = [r for r in runs if r["event"] == "start" and r["run_id"] not in ended]
    return running[-1] if ended and running else None


def open_temp_files(pid: int, state_dir: Path) -> list[str]:
    """The temp files (``*.tmp``) of ``state_dir`` that ``pid`` holds open."""
    found = []
    with os.scandir(f"/proc/{pid}/fd") as fds:
        for fd in fds:
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith(f"{state_dir}/") and target.endswith(".tmp"):
                found.append(target)
    return found


def kill_inside_a_write(pid: int, state_dir: Path, timeout: float = 60) -> str:
    """Freeze ``pid`` at random instants until it is inside a state write; SIGKILL it there.

    Returns the temp file it held open. SIGSTOP is asynchronous: the state must
    read ``T`` before the open files are looked at.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.kill(pid, signal.SIGSTOP)
        while (state := stat_fields(pid)[:1]) == [b"R"] or state == [b"S"] or state == [b"D"]:
            pass
        if state != [b"T"]:
            raise AssertionError(f"batchd (pid {pid}) is gone (state {state}) before the kill")
        temps = open_temp_files(pid, state_dir)
        if temps:
            os.kill(pid, signal.SIGKILL)
            return temps[0]
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.0005)
    raise AssertionError(f"batchd never held a temp file of {state_dir} open in {timeout}s")


def stop_namespace(d: Daemon) -> None:
    """Kill unshare, and with it (--kill-child) the namespace. Not ``Daemon.close()``: the
    agent log holds pids of the namespace, which name other processes out here."""
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def repeats_without_a_kill(runs: list[dict[str, Any]], kills: list[float]) -> list[str]:
    """Features that ran again after a run of theirs ended, with no kill in between.

    At least once: a runner that ended just before a kill may run again (its
    outcome was never recorded). Any other repeat is a completed feature run twice.
    """
    bad = []
    last_end: dict[str, float] = {}
    for r in sorted(runs, key=lambda r: float(r["t"])):
        index, t = r["index"], float(r["t"])
        if r["event"] == "start" and index in last_end:
            if not any(last_end[index] < k < t for k in kills):
                bad.append(f"feature {index} ran again at {t} after ending at {last_end[index]}")
        elif r["event"] == "end":
            last_end[index] = t
    return bad


def test_sigkill_of_pid1_ten_times_repeats_no_completed_feature(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Ten container stops, mid-feature and mid-write: every feature completes, none twice."""
    d = Daemon(tmp_path / "d", anyio_backend)
    kills: list[float] = []
    torn: list[str] = []
    try:
        for cycle in range(CYCLES):
            before = frozenset(r["run_id"] for r in d.agent_runs())
            pid1 = start_as_pid1(d)
            if cycle == 0:
                d.drop("c.txt", [f"f{i} sleep=0.3" for i in range(FEATURES)])
            d.wait_for(partial(new_running_run, d, before), what="progress, then a runner")
            if cycle % 2:
                torn.append(kill_inside_a_write(pid1, d.state))
            else:
                os.kill(pid1, signal.SIGKILL)  # the whole namespace dies with it
            kills.append(time.time())
            assert d.proc is not None
            d.proc.wait(30)
        start_as_pid1(d)
        (state,) = d.wait_finished(1, timeout=120)
        status = d.status()
    finally:
        stop_namespace(d)
    assert len(torn) == CYCLES // 2
    assert state["status"] == "completed" and state["completed_features"] == list(range(FEATURES))
    assert status["problems"] == [] and not status["queue_paused"], status
    runs = d.agent_runs()
    assert all(r["code"] == 0 for r in runs if r["event"] == "end")
    assert {r["index"] for r in runs if r["event"] == "end"} == {str(i) for i in range(FEATURES)}
    assert repeats_without_a_kill(runs, kills) == []
    assert sorted(p.name for p in d.state.rglob("*.tmp")) == []
