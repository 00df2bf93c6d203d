"""Several features at once (SPEC 11): slots, per-batch order, one feature per cwd, recovery,
and a state dir written by batchd 0.1.0 taken over as is. Real daemons, the fake agent."""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness import Daemon, alive

MakeDaemon = Callable[..., Daemon]
V01_STATE = Path(__file__).resolve().parent / "data" / "v0.1-state"


def runs(d: Daemon) -> list[dict[str, Any]]:
    """One record per runner process: batch, index, cwd, start and end time (None: alive)."""
    by_pid: dict[int, dict[str, Any]] = {}
    for rec in d.agent_runs():
        pid = int(rec["pid"])
        if rec["event"] == "start":
            by_pid[pid] = {**rec, "start": rec["t"], "end": None}
        elif pid in by_pid:
            by_pid[pid]["end"] = rec["t"]
    return sorted(by_pid.values(), key=lambda r: r["start"])


def most_at_once(records: list[dict[str, Any]]) -> int:
    """The largest number of runners alive at one moment (from their start and end times)."""
    edges = sorted(
        [(r["start"], 1) for r in records] + [(r["end"], -1) for r in records if r["end"]],
        key=lambda e: (e[0], e[1]),
    )
    alive = best = 0
    for _, step in edges:
        alive += step
        best = max(best, alive)
    return best


def overlap(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    return any(
        x["start"] < (y["end"] or 1e18) and y["start"] < (x["end"] or 1e18) for x in a for y in b
    )


def drop_in(d: Daemon, name: str, cwd: Path, features: list[str]) -> None:
    d.drop(name, [f"# batchd: cwd = {cwd}", *features])


def repos(d: Daemon, *names: str) -> list[Path]:
    out = []
    for n in names:
        p = d.root / "repos" / n
        p.mkdir(parents=True, exist_ok=True)
        out.append(p)
    return out


def test_three_slots_run_three_batches_at_once(make_daemon: MakeDaemon) -> None:
    """Three slots over three batches in three cwds: their first features run at the same
    time (they meet at a barrier); each batch still runs its features in index order, one
    at a time."""
    d = make_daemon(config="[queue]\nslots = 3\n")
    gate = d.root / "gate"
    gate.mkdir()
    d.start()
    for i, repo in enumerate(repos(d, "a", "b", "c")):
        drop_in(d, f"{i}.txt", repo, [f"b{i}f0 barrier={gate}:3", f"b{i}f1", f"b{i}f2 sleep=0.1"])
    states = d.wait_finished(3)
    assert [s["status"] for s in states] == ["completed"] * 3
    records = runs(d)
    assert most_at_once(records) == 3
    for s in states:
        mine = [r for r in records if r["batch_id"] == s["batch_id"]]
        assert [int(r["index"]) for r in mine] == [0, 1, 2]
        assert most_at_once(mine) == 1
    assert d.status()["slots"] == 3


def test_two_slots_never_run_more_than_two(make_daemon: MakeDaemon) -> None:
    """Two slots and four batches in four cwds: two runners at once (they meet at a
    barrier), never more."""
    d = make_daemon(config="[queue]\nslots = 2\n")
    gate = d.root / "gate"
    gate.mkdir()
    d.start()
    for i, repo in enumerate(repos(d, "a", "b", "c", "d")):
        drop_in(d, f"{i}.txt", repo, [f"q{i}a barrier={gate}:2 sleep=0.3", f"q{i}b sleep=0.1"])
    d.wait_finished(4)
    records = runs(d)
    assert len(records) == 8 and most_at_once(records) == 2


def test_one_cwd_never_runs_two_features_even_through_a_symlink(make_daemon: MakeDaemon) -> None:
    """Two batches in one repository (one named through a symlink) never overlap, while a
    batch in another cwd runs beside them (its first feature meets the first one's at a
    barrier)."""
    d = make_daemon(config="[queue]\nslots = 3\n")
    repo, other = repos(d, "repo", "other")
    link = d.root / "repos" / "link"
    link.symlink_to(repo)
    gate = d.root / "gate"
    gate.mkdir()
    d.start()
    drop_in(d, "a.txt", repo, [f"a0 barrier={gate}:2 sleep=0.5", "a1 sleep=0.5"])
    drop_in(d, "b.txt", link, ["b0 sleep=0.5", "b1 sleep=0.5"])
    drop_in(d, "c.txt", other, [f"c0 barrier={gate}:2 sleep=0.5", "c1 sleep=0.5"])
    states = d.wait_finished(3)
    by = {s["features_file"]: s["batch_id"] for s in states}
    records = runs(d)
    a = [r for r in records if r["batch_id"] == by["a.txt"]]
    b = [r for r in records if r["batch_id"] == by["b.txt"]]
    c = [r for r in records if r["batch_id"] == by["c.txt"]]
    assert not overlap(a, b)
    assert overlap(a + b, c)
    assert max(r["start"] for r in a) < min(r["start"] for r in b)  # seq order in one cwd
    [item] = [x for x in d.status()["batches"] if x["batch_id"] == by["b.txt"]]
    assert item["workdir"] == str(repo)


def test_a_retry_wait_keeps_its_cwd_and_frees_its_slot(make_daemon: MakeDaemon) -> None:
    """While a feature waits for its retry, another batch of its cwd does not start, but a
    batch in another cwd uses the slot; the waiting one then finishes before its neighbour."""
    d = make_daemon(
        config='[queue]\nslots = 1\n[retry]\nbackoff_initial = 1.5\njitter = "none"\n',
        env={"BATCH_RETRY_ENABLED": "true"},
    )
    repo, other = repos(d, "repo", "other")
    go = d.root / "go"
    d.start()
    # The first attempt fails only once both other batches are queued: the wait begins with
    # them there, so the choice of what uses the slot is made at once, not raced by intake.
    flaky = f"flaky fail_until=2 wait={go}"
    drop_in(d, "a.txt", repo, [flaky])
    d.wait_for(lambda: runs(d), what="the first attempt")
    drop_in(d, "b.txt", repo, ["neighbour"])
    drop_in(d, "c.txt", other, ["elsewhere"])
    d.wait_for(lambda: len(d.batch_states()) == 3, what="both queued")
    go.touch()
    d.wait_finished(3)
    r = {x["feature"] + "/" + str(x["attempt"]): x for x in runs(d)}
    assert r["elsewhere/1"]["start"] < r[f"{flaky}/2"]["start"]  # used the free slot
    assert r["neighbour/1"]["start"] > r[f"{flaky}/2"]["end"]  # the cwd stayed reserved


def test_kill_9_with_several_runners_loses_nothing(make_daemon: MakeDaemon) -> None:
    """kill -9 while three runners run: the restart follows all three (none stopped, none
    run again, SPEC 16), and every feature completes exactly once."""
    d = make_daemon(config="[queue]\nslots = 3\n")
    go = d.root / "go"
    d.start()
    for i, repo in enumerate(repos(d, "a", "b", "c")):
        drop_in(d, f"{i}.txt", repo, [f"k{i}a wait={go}", f"k{i}b"])
    d.wait_for(lambda: len(d.status()["running"]) == 3 and len(runs(d)) == 3, what="3 running")
    first = sorted(int(r["pid"]) for r in runs(d))
    d.kill9()
    assert all(alive(p) for p in first)
    d.start()
    d.wait_for(lambda: sorted(r["pid"] for r in d.status()["running"]) == first, what="3 followed")
    go.touch()
    states = d.wait_finished(3)
    done = Counter(
        (s["batch_id"], h["feature_index"])
        for s in states
        for h in s["processing_history"]
        if h["outcome"] == "completed"
    )
    assert sorted(done.values()) == [1] * 6
    assert all(h["outcome"] == "completed" for s in states for h in s["processing_history"])
    assert len(runs(d)) == 6


def test_pause_now_stops_every_runner(make_daemon: MakeDaemon) -> None:
    """pause --now with three features running stops all three groups, records each
    interrupted, and resume runs them again."""
    d = make_daemon(config="[queue]\nslots = 3\n")
    d.start()
    for i, repo in enumerate(repos(d, "a", "b", "c")):
        drop_in(d, f"{i}.txt", repo, [f"p{i} sleep=30"])
    d.wait_for(lambda: len(runs(d)) == 3, what="3 running")
    pids = [int(r["pid"]) for r in runs(d)]
    reply = d.ok("pause", now=True)
    assert reply["stopped"] == 3 and reply["stopped_running"] is True
    assert not any(alive(p) for p in pids)
    assert d.status()["running"] == []
    for s in d.batch_states():
        assert [h["outcome"] for h in s["processing_history"]] == ["interrupted"]


def test_fewer_slots_on_reload_let_running_features_finish(make_daemon: MakeDaemon) -> None:
    """Slots 3 → 1 with SIGHUP while three run: they finish (completed, not interrupted), and
    from then on one feature runs at a time."""
    d = make_daemon(config="[queue]\nslots = 3\n")
    gate = d.root / "gate"
    gate.mkdir()
    go = d.root / "go"
    d.start()
    for i, repo in enumerate(repos(d, "a", "b", "c")):
        drop_in(d, f"{i}.txt", repo, [f"r{i}a barrier={gate}:3 wait={go}", f"r{i}b sleep=0.2"])
    d.wait_for(lambda: len(os.listdir(gate)) == 3, what="3 running at once")
    d.write_config(d.runner_argv, "[queue]\nslots = 1\n")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for(lambda: d.status()["slots"] == 1, what="the reload")
    go.touch()  # the three end only once the reload is in force
    states = d.wait_finished(3)
    records = runs(d)
    assert all(h["outcome"] == "completed" for s in states for h in s["processing_history"])
    later = [r for r in records if r["feature"].endswith("b sleep=0.2")]
    assert most_at_once(later) == 1


def test_a_state_dir_of_batchd_0_1_is_taken_over_as_is(make_daemon: MakeDaemon) -> None:
    """The checked-in state dir of batchd 0.1.0 (killed with SIGKILL mid-run; see
    tests/data/v0.1-state.md): nothing is quarantined, nothing finished runs again, every
    batch continues: the interrupted one, the one waiting to retry, the pending one, and the
    one paused by its breaker once that is reset."""
    d = make_daemon()
    shutil.copytree(V01_STATE, d.state)
    for root, _dirs, files in os.walk(d.state):
        os.chmod(root, 0o700)
        for f in files:
            os.chmod(os.path.join(root, f), 0o600)
    d.start()
    st = d.status()
    assert st["problems"] == [] and st["finished_total"] == 2
    by_seq = {s["seq"]: s for s in d.batch_states()}
    assert by_seq[3]["pause_reason"] == "breaker"
    d.ok("reset-breaker", batch_id=3)
    states = d.wait_finished(6)
    assert [s["status"] for s in states] == [
        "completed",
        "failed",
        "failed",
        "completed",
        "completed",
        "completed",
    ]
    ran = Counter(r["feature"] for r in d.agent_runs() if r["event"] == "start")
    assert ran == Counter(["ok c2", "fail_until=2 d0", "ok d1", "sleep=3 e0", "ok e1", "ok f0"])
    d0 = [r for r in d.agent_runs() if r["event"] == "start" and r["feature"] == "fail_until=2 d0"]
    assert [r["attempt"] for r in d0] == [2]
    e0 = [h for h in states[4]["processing_history"] if h["feature_index"] == 0]
    assert [(h["attempt"], h["outcome"]) for h in e0] == [(1, "interrupted"), (1, "completed")]
    assert not list(d.state.rglob("*.corrupt-*"))
    assert d.status()["problems"] == []
