"""Local runs outlive the daemon (SPEC 16): kill -9, `batchctl restart`, on_stop = "leave".

A real daemon, the fake agent; the daemon is killed or restarted while a
feature runs, and the tests look at what a user would: the agent's own
record of its starts and ends, the attempt history, the attempt log, the
processes left. "A power cut" kills the runner and its keeper with the
daemon, as a reboot does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchd import procfs
from tests.harness import Daemon, alive

MakeDaemon = Callable[..., Daemon]


def set_runner_keys(d: Daemon, **keys: object) -> None:
    """Add keys to the daemon's [runner] table (the harness writes it first)."""
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    text = d.config_path.read_text()
    text = "\n".join(line for line in text.splitlines() if line.split(" = ")[0] not in keys)
    d.config_path.write_text(text.replace("[runner]\n", f"[runner]\n{lines}", 1) + "\n")


def starts(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in d.agent_runs() if r["event"] == "start"]


def ends(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in d.agent_runs() if r["event"] in ("end", "term")]


def outcomes(state: dict[str, Any]) -> list[str | None]:
    return [h["outcome"] for h in state["processing_history"]]


def running_pids(d: Daemon) -> list[int]:
    """The runner pids `status` shows, once every running feature has its attempt."""
    return sorted(r["pid"] for r in d.status()["running"] if r["pid"] is not None)


def wait_recorded(d: Daemon, count: int) -> list[dict[str, Any]]:
    """Until ``count`` runners have started and each has its attempt recorded."""
    d.wait_for(lambda: len(starts(d)) >= count, what=f"{count} runner starts")
    d.wait_for(lambda: len(running_pids(d)) >= count, what=f"{count} attempts recorded")
    return starts(d)


def long_feature(d: Daemon) -> tuple[Path, dict[str, Any]]:
    """Start ``d`` with one feature that runs until the returned path exists; its start."""
    go = d.root / "go"
    d.start()
    d.drop("a.txt", [f"long wait={go}"])
    [first] = wait_recorded(d, 1)
    return go, first


def group_members(pgid: int) -> list[int]:
    return procfs.group_members(pgid)


def test_kill9_again_and_again_during_one_feature_records_it_once(make_daemon: MakeDaemon) -> None:
    """kill -9 of the daemon three times while one feature runs: one runner start, one end,
    a complete log, and no `interrupted` entry; what it printed meanwhile is judged."""
    d = make_daemon()
    go = d.root / "go"
    d.start()
    d.drop("a.txt", [f"long stdout=before_the_kills wait={go} claude=ok cost=0.25"])
    [first] = wait_recorded(d, 1)
    for _ in range(3):
        d.kill9()
        assert alive(int(first["pid"]))
        d.start()
        d.wait_for(lambda: running_pids(d) == [int(first["pid"])], what="the run followed")
    go.touch()
    [state] = d.wait_finished(1)
    assert outcomes(state) == ["completed"]
    assert state["processing_history"][0]["cost_usd"] == 0.25  # from the agent's result line
    assert len(starts(d)) == 1 and len(ends(d)) == 1
    log = (d.state / "batches" / state["batch_id"] / "logs" / "0.1.log").read_text()
    assert log.startswith("before the kills\n") and '"type": "result"' in log
    assert "runs again from here" not in log


def test_kill9_with_three_slots_and_three_features_in_flight(make_daemon: MakeDaemon) -> None:
    """queue.slots = 3, three batches in three cwds running at once: kill -9 twice; every
    feature starts once and ends once, nothing is interrupted, nothing overlaps in a cwd."""
    d = make_daemon(config="[queue]\nslots = 3\n")
    go = d.root / "go"
    d.start()
    for name in ("a", "b", "c"):
        cwd = d.root / f"cwd-{name}"
        cwd.mkdir()
        d.drop(f"{name}.txt", [f"# batchd: cwd = {cwd}", f"{name}1 wait={go}", f"{name}2"])
    wait_recorded(d, 3)
    pids = running_pids(d)
    for _ in range(2):
        d.kill9()
        assert all(alive(p) for p in pids)
        d.start()
        d.wait_for(lambda: running_pids(d) == pids, what="the three runs followed")
    go.touch()
    states = d.wait_finished(3)
    assert [outcomes(s) for s in states] == [["completed", "completed"]] * 3
    assert Counter(r["feature"] for r in starts(d)) == Counter(
        f"{n}1 wait={go}" if i == 1 else f"{n}2" for n in "abc" for i in (1, 2)
    )
    assert len(ends(d)) == 6


def test_restart_in_a_terminal_keeps_the_pid_and_the_runner(make_daemon: MakeDaemon) -> None:
    """`batchctl restart` of a daemon in a terminal: it executes itself again (same pid),
    the runner is untouched and recorded once, and the state dir's lock is held again."""
    d = make_daemon()
    go = d.root / "go"
    d.start()
    d.drop("a.txt", [f"long wait={go}", "next"])
    [first] = wait_recorded(d, 1)
    assert d.proc is not None
    before = d.status()["daemon"]
    asked = time.monotonic()
    done = d.ctl("restart")
    assert done.returncode == 0, done.stderr
    assert f"pid {before['pid']}, same pid" in done.stdout and "1 running feature" in done.stdout
    after = d.status()["daemon"]
    assert after["pid"] == before["pid"] == d.proc.pid and d.proc.poll() is None
    assert after["uptime_s"] < time.monotonic() - asked  # a new start, in the same process
    d.wait_for(lambda: running_pids(d) == [int(first["pid"])], what="the runner followed")
    assert alive(int(first["pid"]))
    assert "executing itself again" in d.stderr()
    second = subprocess.run(
        [sys.executable, "-m", "batchd", "--backend", d.backend],
        env=d.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1  # the restarted daemon holds the state dir again
    go.touch()
    [state] = d.wait_finished(1)
    assert outcomes(state) == ["completed", "completed"]
    assert [r["feature"] for r in starts(d)] == [f"long wait={go}", "next"]


def test_on_stop_leave_makes_sigterm_leave_the_runners(make_daemon: MakeDaemon) -> None:
    """runner.on_stop = "leave": SIGTERM exits 75 and leaves the runner running; the next
    start follows it to its end, once."""
    d = make_daemon()
    set_runner_keys(d, on_stop="leave")
    go, first = long_feature(d)
    assert d.stop() == 75
    assert alive(int(first["pid"]))
    d.start()
    go.touch()
    [state] = d.wait_finished(1)
    assert outcomes(state) == ["completed"] and len(starts(d)) == 1


def test_the_timeout_counts_from_the_original_start_across_a_kill9(
    make_daemon: MakeDaemon,
) -> None:
    """runner.timeout = 4 s, the daemon killed and away for 2 s: the run is ended 4 s after
    it started (not 4 s after the restart), and recorded timed out once."""
    d = make_daemon()
    set_runner_keys(d, timeout=4)
    d.start()
    d.drop("a.txt", ["slow sleep=60"])
    [first] = wait_recorded(d, 1)
    d.kill9()
    d.wait_for(lambda: time.time() - first["t"] >= 2.0, what="2 s after the start")
    d.start()
    [state] = d.wait_finished(1)
    assert outcomes(state) == ["timed_out"]
    [term] = [r for r in d.agent_runs() if r["event"] == "term"]
    # The keeper counts from the spawn, the agent notes its start after its own start-up.
    assert 3.5 <= term["t"] - first["t"] < 6.5, term["t"] - first["t"]


def test_cancel_of_a_reattached_run_leaves_no_process_of_its_group(
    make_daemon: MakeDaemon,
) -> None:
    """cancel of a run the daemon found again after kill -9: its whole group is ended, the
    member that ignores SIGTERM included."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["stubborn ignore_term grandchild=60 sleep=60"])
    [first] = wait_recorded(d, 1)
    pgid = int(first["pid"])
    assert len(group_members(pgid)) == 2
    d.kill9()
    d.start()
    [state] = d.batch_states()
    d.ok("cancel", batch_id=state["batch_id"])
    [state] = d.wait_finished(1)
    assert state["status"] == "cancelled" and outcomes(state) == ["interrupted"]
    assert group_members(pgid) == []
    assert procfs.with_env(f"BATCHD_RUN_ID={first['run_id']}".encode()) == []


def test_pause_now_of_a_reattached_run_stops_it_and_resume_runs_it_again(
    make_daemon: MakeDaemon,
) -> None:
    """pause --now of a re-attached run ends its group (interrupted); resume runs it again."""
    d = make_daemon()
    go, first = long_feature(d)
    d.kill9()
    d.start()
    [state] = d.batch_states()
    d.ok("pause", batch_id=state["batch_id"], now=True)
    d.wait_for(lambda: not alive(int(first["pid"])), what="the runner's end")
    assert outcomes(d.batch_states()[0]) == ["interrupted"]
    go.touch()
    d.ok("resume", batch_id=state["batch_id"])
    [state] = d.wait_finished(1)
    assert outcomes(state) == ["interrupted", "completed"] and len(starts(d)) == 2


# Waits for the file its argument names (the feature text), then writes 5,000 bytes.
CHATTY = (
    "import os, sys, time\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
    "sys.stdout.write('x' * 5000 + '\\nthe last line\\n')\n"
)


def test_a_reattached_run_whose_output_passes_max_log_bytes(make_daemon: MakeDaemon) -> None:
    """max_log_bytes holds for a run found again after kill -9: head, marker, tail."""
    d = make_daemon(runner=[sys.executable, "-c", CHATTY, "{feature}"])
    set_runner_keys(d, max_log_bytes=1024)
    go = d.root / "go"
    d.start()
    d.drop("a.txt", [str(go)])
    d.wait_for(lambda: d.status()["running"] and d.status()["running"][0]["pid"], what="start")
    d.kill9()
    d.start()
    go.touch()
    [state] = d.wait_finished(1)
    assert outcomes(state) == ["completed"]
    log = (d.state / "batches" / state["batch_id"] / "logs" / "0.1.log").read_text()
    head, marker, tail = log.partition("[batchd: 3991 bytes omitted here")
    assert head == "x" * 512 + "\n" and marker
    assert tail.endswith("x" * 497 + "\nthe last line\n")


def test_a_power_cut_interrupts_the_feature_and_runs_it_again(make_daemon: MakeDaemon) -> None:
    """The runner dies with the daemon and its keeper (a reboot): the attempt is recorded
    interrupted and runs again, uncharged."""
    d = make_daemon()
    go, first = long_feature(d)
    d.power_cut()
    assert not alive(int(first["pid"]))
    d.start()
    d.wait_for(lambda: len(starts(d)) == 2, what="the run again")
    go.touch()
    [state] = d.wait_finished(1)
    assert outcomes(state) == ["interrupted", "completed"]
    assert [h["attempt"] for h in state["processing_history"]] == [1, 1]


def test_the_keeper_leaves_with_the_daemon_when_nothing_runs(make_daemon: MakeDaemon) -> None:
    """A stop with nothing running leaves no keeper behind."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["one"])
    d.wait_finished(1)
    assert d.proc is not None
    keepers = d.keepers()
    assert len(keepers) == 1
    assert d.stop() == 0
    d.wait_for(lambda: not any(alive(p) for p in keepers), what="the keeper's exit")
