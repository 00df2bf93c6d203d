"""batchd as PID 1 of a PID namespace, stopped like a container: SIGKILL of PID 1, again and again.

``unshare --pid --fork --mount --mount-proc`` makes batchd PID 1 of a new
namespace (root only). SIGKILL of that PID 1 kills everything in the namespace
at once, runner included, as a container stop does, and every start gets pid 1
again: whatever batchd keys on its pid alone (temp file names, lock contents)
meets what the killed start left behind (NOTES.md "PID namespaces").

Every kill lands at a named failpoint (``batchd/failpoints.py``) reached for
certain in its cycle, never at a moment found by chance. Half of the kills land
mid-feature (``after_attempt_record``: a runner started, its attempt and pid are
on disk, its outcome is not); the other half inside a state write (``inside_state_write``:
a temp ``state.json`` written and fsynced, not renamed), which leaves a temp file
behind. The daemon waits at the point (``:pause``) and the test kills it from
outside: PID 1 of a namespace cannot SIGKILL itself (the kernel drops a signal
sent to init from inside its namespace unless it has a handler).
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


def start_as_pid1(d: Daemon, env: dict[str, str]) -> int:
    """Start ``d`` as PID 1 of a new PID namespace; its pid as seen from here, once ready."""
    with open(d.stderr_path, "ab") as err:
        # --kill-child: if the test kills unshare (teardown), the namespace goes too.
        d.proc = subprocess.Popen(
            [*UNSHARE, sys.executable, "-m", "batchd", "--backend", d.backend],
            env={**d.env, **env},
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


def stop_point(cycle: int) -> str:
    """Where the daemon of ``cycle`` stops, counted from its start (one slot, so in order).

    Even cycles: at the second attempt record (the first feature has ended and been
    recorded, the next one's runner started). Odd cycles, which follow an even one
    and so begin with recovery's ``interrupted`` mark (write 1), then the rerun's
    attempt (2) and outcome (3), the next attempt (4): inside write 3 or 4 of the
    batch's ``state.json``, a torn outcome and a torn attempt record in turn. Each
    cycle records at most one completed feature, so the features never run out
    before the point is reached.
    """
    if cycle % 2 == 0:
        return "after_attempt_record@2"
    return f"inside_state_write@{3 + (cycle // 2) % 2}"


def hit_file(gate: Path) -> Path | None:
    """The ``.hit`` file of the one failpoint armed in ``gate``, once the daemon is there."""
    return next(gate.glob("*.hit"), None)


def ended_since(d: Daemon, before: frozenset[str]) -> set[str]:
    """Run ids of the runners started since ``before`` (the run ids seen then) that ended."""
    return {
        r["run_id"] for r in d.agent_runs() if r["run_id"] not in before and r["event"] == "end"
    }


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
    torn: list[Path] = []
    try:
        for cycle in range(CYCLES):
            before = frozenset(r["run_id"] for r in d.agent_runs())
            gate = tmp_path / f"gate{cycle}"
            gate.mkdir()
            env = {
                "BATCHD_FAILPOINTS": f"{stop_point(cycle)}:pause",
                "BATCHD_FAILPOINT_DIR": str(gate),
            }
            pid1 = start_as_pid1(d, env)
            if cycle == 0:
                d.drop("c.txt", [f"f{i} sleep=0.3" for i in range(FEATURES)])
            hit = d.wait_for(partial(hit_file, gate), 60, f"batchd at {stop_point(cycle)}")
            assert ended_since(d, before), f"cycle {cycle}: no runner ended before {hit.name}"
            if cycle % 2:
                (temp,) = open_temp_files(pid1, d.state)
                assert Path(temp).name.startswith(".state.json."), temp
                torn.append(Path(temp))
            os.kill(pid1, signal.SIGKILL)  # from outside; the whole namespace dies with it
            kills.append(time.time())
            assert d.proc is not None
            d.proc.wait(30)
            if cycle % 2:
                assert torn[-1].exists(), f"the killed write left no temp file {torn[-1]}"
        start_as_pid1(d, {})
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
