"""kill -9 anywhere: nothing lost, nothing finished run again (issue 3 recovery)."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Daemon, alive

MakeDaemon = Callable[..., Daemon]


def check_exactly_once(d: Daemon, features: list[str]) -> dict[str, Any]:
    """Every feature completed exactly once; no two runners overlapped."""
    [state] = d.batch_states()
    assert state["status"] == "completed"
    assert sorted(state["completed_features"]) == list(range(len(features)))
    assert len(set(state["completed_features"])) == len(features)
    done = Counter(
        h["feature_index"] for h in state["processing_history"] if h["outcome"] == "completed"
    )
    assert all(n == 1 for n in done.values()), done
    assert_no_overlap(d)
    return state


def assert_no_overlap(d: Daemon) -> None:
    """Runner lifetimes from the agent log never overlap (start..end/term of each pid)."""
    live: set[int] = set()
    for rec in d.agent_runs():
        pid = int(rec["pid"])
        if rec["event"] == "start":
            for other in list(live):
                if alive(other):
                    raise AssertionError(f"runner {pid} started while {other} was alive")
                live.discard(other)
            live.add(pid)
        else:
            live.discard(pid)


@pytest.mark.parametrize(
    "point",
    ["after_batch_write", "after_attempt_record", "after_runner_exit", "before_outcome_write"],
)
def test_named_crash_points(make_daemon: MakeDaemon, point: str) -> None:
    """A kill -9 at each named point: after restart every feature completes exactly once, and
    the one in flight is not run again (its run outlived the daemon and is judged as it ended)."""
    # after_spawn is covered by the BATCHD_RUN_ID test below.
    features = ["one", "two sleep=0.2", "three"]
    d = make_daemon()
    d.start(env={"BATCHD_FAILPOINTS": f"{point}@2" if point != "after_batch_write" else point})
    d.drop("c.txt", features)
    assert d.proc is not None
    assert d.proc.wait(30) == -9
    d.start()
    d.wait_finished(1)
    state = check_exactly_once(d, features)
    runs = Counter(r["feature"] for r in d.agent_runs() if r["event"] == "start")
    assert runs == {"one": 1, "two sleep=0.2": 1, "three": 1}, runs
    assert [h["outcome"] for h in state["processing_history"]] == ["completed"] * 3
    if point == "after_batch_write":
        assert (d.state / "batches" / state["batch_id"] / "source").exists()
        assert not (d.spool / "c.txt").exists()
        assert not list((d.spool / ".claimed").iterdir())


def test_idempotent_ingestion_and_same_file_later_is_new(make_daemon: MakeDaemon) -> None:
    """A crash between batch write and move ingests once; the same file dropped later is new."""
    d = make_daemon()
    d.start(env={"BATCHD_FAILPOINTS": "after_batch_write"})
    d.drop("same.txt", ["alpha"])
    assert d.proc is not None
    assert d.proc.wait(30) == -9
    assert (d.spool / ".claimed" / "same.txt").exists()  # claimed; its batch has no source
    d.start()
    d.wait_finished(1)
    assert len(d.batch_states()) == 1
    d.drop("same.txt", ["alpha"])
    states = d.wait_finished(2)
    assert len(states) == 2 and states[0]["source_sha256"] == states[1]["source_sha256"]


def test_a_runner_left_by_a_killed_daemon_is_followed_not_stopped(make_daemon: MakeDaemon) -> None:
    """A runner left alive by a killed daemon keeps running; the next daemon waits for it and
    records it once (SPEC 16), then goes on."""
    d = make_daemon()
    go = d.root / "go"
    d.start()
    d.drop("o.txt", [f"orphan wait={go}", "next"])
    [first] = d.wait_for(lambda: [r for r in d.agent_runs() if r["event"] == "start"], what="start")
    d.wait_for(lambda: d.batch_states()[0]["processing_history"], what="attempt record")
    d.kill9()
    d.start()
    assert alive(int(first["pid"]))
    [running] = d.status()["running"]
    assert running["pid"] == int(first["pid"]) and running["feature_index"] == 0
    go.touch()
    [st] = d.wait_finished(1)
    assert [h["outcome"] for h in st["processing_history"]] == ["completed", "completed"]
    assert Counter(r["feature"] for r in d.agent_runs() if r["event"] == "start") == {
        f"orphan wait={go}": 1,
        "next": 1,
    }
    d.stop()


def test_orphan_found_by_run_id_when_pid_was_not_written(make_daemon: MakeDaemon) -> None:
    """A kill between spawn and the pid write: the orphan is found by BATCHD_RUN_ID."""
    d = make_daemon()
    d.start(env={"BATCHD_FAILPOINTS": "after_spawn"})
    d.drop("r.txt", ["runid sleep=60"])
    assert d.proc is not None
    assert d.proc.wait(30) == -9
    d.wait_for(lambda: [r for r in d.agent_runs() if r["event"] == "start"], what="start")
    [first] = [r for r in d.agent_runs() if r["event"] == "start"]
    assert not d.batch_states()[0]["processing_history"]  # no pid was recorded
    assert alive(int(first["pid"]))
    d.start()
    assert not alive(int(first["pid"]))
    d.stop()


def test_random_kills_lose_nothing(make_daemon: MakeDaemon) -> None:
    """kill -9 at random moments (20 times): every feature completes exactly once."""
    rng = random.Random(int(os.environ.get("BATCHD_TORTURE_SEED", "7")))
    features = [f"f{i} sleep=0.{i % 3}" for i in range(30)]
    d = make_daemon()
    d.start()
    d.drop("k.txt", features)
    kills = 0
    while kills < 20:  # all 20 kills happen, even if the batch finishes first
        time.sleep(rng.uniform(0.0, 0.25))
        d.kill9()
        kills += 1
        d.start()
    d.wait_finished(1, timeout=60)
    check_exactly_once(d, features)
    [state] = d.batch_states()
    reran = Counter(r["feature"] for r in d.agent_runs() if r["event"] == "start")
    extra = sum(n - 1 for n in reran.values())
    assert extra <= kills, "only a feature in flight at a kill runs again"
    interrupted = sum(h["outcome"] == "interrupted" for h in state["processing_history"])
    assert interrupted <= kills


def test_audit_is_durable_before_the_state_that_applies_it(make_daemon: MakeDaemon) -> None:
    """A kill between the audit append and the state write: the audit holds the decision,
    the state does not; after the restart the attempt's end is judged again from what its
    run recorded (it does not run again) and audited again."""
    d = make_daemon(
        config='[retry]\nbackoff_initial = 0.05\njitter = "none"\n',
        env={"BATCH_RETRY_ENABLED": "true"},
    )
    d.start(env={"BATCHD_FAILPOINTS": "after_audit_write"})
    d.drop("a.txt", ["flaky fail_until=2"])
    assert d.proc is not None
    assert d.proc.wait(30) == -9
    [state] = d.batch_states()
    [decision] = [e for e in d.audit(state["batch_id"]) if e["event_type"] == "retry_decision"]
    assert decision["decision"] == "retry" and decision["retry_count"] == 1
    # The state never saw that decision: the attempt is still open, no retry counted.
    assert [h["outcome"] for h in state["processing_history"]] == [None]
    assert d.retry_state(state["batch_id"])["retry_counts"] == {}
    d.start()
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    outcomes = [(h["attempt"], h["outcome"]) for h in state["processing_history"]]
    assert outcomes == [(1, "failed"), (2, "completed")]
    assert [r["attempt"] for r in d.agent_runs() if r["event"] == "start"] == [1, 2]
    decisions = [e for e in d.audit(state["batch_id"]) if e["event_type"] == "retry_decision"]
    assert len(decisions) == 2 and all(e["retry_count"] == 1 for e in decisions)
    assert d.retry_state(state["batch_id"])["retry_counts"] == {"0": 1}


def test_an_interrupted_attempt_runs_again_into_its_log_after_a_separator(
    make_daemon: MakeDaemon,
) -> None:
    """After a power cut mid-run (the runner dies with the daemon), the attempt runs again
    with the same number and appends to the same log, after a line saying so."""
    d = make_daemon()
    d.start()
    d.drop("l.txt", ["chatty stdout=first_run sleep=60"])
    d.wait_for(lambda: [r for r in d.agent_runs() if r["event"] == "start"], what="start")
    [state] = d.wait_for(
        lambda: d.batch_states() if d.batch_states()[0]["processing_history"] else None,
        what="attempt",
    )
    log = d.state / "batches" / state["batch_id"] / "logs" / "0.1.log"
    d.wait_for(lambda: log.exists() and "first run" in log.read_text(), what="output")
    d.power_cut()
    d.start()
    d.wait_for(lambda: log.read_text().count("first run") == 2, what="the second run's output")
    d.ok("skip", batch_id=state["batch_id"], index=0)  # stop the second run: enough seen
    d.wait_finished(1)
    text = log.read_text()
    assert text.count("first run") == 2
    assert "the interrupted attempt runs again from here" in text
    assert text.index("runs again from here") < text.rindex("first run")
