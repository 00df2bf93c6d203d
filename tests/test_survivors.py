"""Tests that kill mutants which survived the suite (issue 23, "tests that bite").

Each test names the mutant it kills. All but the first drive a real daemon: the
mutants live in modules that are being restructured, so the behaviour is what is
pinned, not a helper's shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchd.policy import consent
from tests.harness import Daemon, agent_command

MakeDaemon = Callable[..., Daemon]

FAST = '[retry]\nbackoff_initial = 0.05\nbackoff_max = 0.2\njitter = "none"\n'


def decisions(d: Daemon, batch_id: str) -> list[dict[str, object]]:
    return [e for e in d.audit(batch_id) if e["event_type"] == "retry_decision"]


def on_disk(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_bytes())
    return data


# --- consent: the environment first, then .env, then user_state.json -----------------------


@pytest.mark.parametrize(
    ("env", "dotenv", "saved", "expected"),
    [
        ("no", True, True, False),  # the environment beats a contrary .env
        ("yes", False, False, True),
        (None, False, True, False),  # .env beats a contrary user_state.json
        (None, True, False, True),
        (None, None, True, True),
        ("not a boolean", True, False, True),  # an unreadable value counts as unset
    ],
)
def test_consent_precedence_when_sources_contradict(
    env: str | None, dotenv: bool | None, saved: bool | None, expected: bool
) -> None:
    """Every pair of contradicting consent sources: the earlier source wins."""
    assert consent(env, dotenv, saved) is expected


def test_the_environment_beats_a_contrary_dotenv_in_the_batch_cwd(make_daemon: MakeDaemon) -> None:
    """BATCH_RETRY_ENABLED in the daemon's environment wins over the batch cwd's .env, both ways."""
    d = make_daemon(config=FAST, env={"BATCH_RETRY_ENABLED": "no"})
    (d.workdir / ".env").write_text("BATCH_RETRY_ENABLED=yes\n")
    d.start()
    d.drop("a.txt", ["refused fail_until=2"])
    [state] = d.wait_finished(1)
    assert state["status"] == "failed"
    [decision] = decisions(d, state["batch_id"])
    assert decision["reason"] == "consent_not_given"
    d.stop()
    d.extra_env = {"BATCH_RETRY_ENABLED": "yes"}
    (d.workdir / ".env").write_text("BATCH_RETRY_ENABLED=no\n")
    d.start()
    d.drop("b.txt", ["allowed fail_until=2"])
    states = d.wait_finished(2)
    assert states[1]["status"] == "completed"
    assert [h["outcome"] for h in states[1]["processing_history"]] == ["failed", "completed"]
    [decision] = decisions(d, states[1]["batch_id"])
    assert decision["decision"] == "retry"


# --- the journal: audit records of a failed write are written when it is retried -----------


def test_audit_records_of_a_failed_write_are_written_when_the_disk_recovers(
    make_daemon: MakeDaemon,
) -> None:
    """A retry decision whose audit append fails (disk full) reaches the audit once the disk
    has space again: the journal keeps pending records across the failure."""
    d = make_daemon(config=FAST, env={"BATCH_RETRY_ENABLED": "true"})
    flag = d.root / "disk-full"
    gate = d.root / "gate"
    gate.mkdir()
    points = f"enospc={flag},before_outcome_write:pause"
    d.start(env={"BATCHD_FAILPOINTS": points, "BATCHD_FAILPOINT_DIR": str(gate)})
    d.drop("a.txt", ["flaky fail_until=2"])
    # The disk fills while the daemon holds the first outcome (a failure: retry decided).
    d.wait_for(lambda: (gate / "before_outcome_write.hit").exists(), what="the first outcome")
    flag.write_text("")
    (gate / "before_outcome_write.go").touch()
    [problem] = d.wait_for(lambda: d.status()["problems"], what="the failed write reported")
    assert problem["kind"] == "state_write" and "No space left" in problem["message"]
    [state] = d.batch_states()
    bid = state["batch_id"]
    assert decisions(d, bid) == []  # the append failed: nothing on disk yet
    flag.unlink()
    [state] = d.wait_finished(1)
    assert [h["outcome"] for h in state["processing_history"]] == ["failed", "completed"]
    found = [(e["decision"], e["feature_index"], e["retry_count"]) for e in decisions(d, bid)]
    assert found == [("retry", 0, 1)], "the retry decision of attempt 1 is not in the audit"
    assert d.status()["problems"] == []


# --- recovery: next_seq, the interrupted mark, trouble pauses -------------------------------


def test_a_daemon_json_older_than_the_batches_never_reuses_a_seq(make_daemon: MakeDaemon) -> None:
    """daemon.json restored from before the last batch (next_seq behind): the next batch gets
    the seq after the highest one on disk, and daemon.json says so."""
    d = make_daemon()
    d.start()
    d.drop("a.txt", ["one"])
    d.wait_finished(1)
    old = (d.state / "daemon.json").read_bytes()
    assert on_disk(d.state / "daemon.json")["next_seq"] == 2
    d.drop("b.txt", ["two"])
    d.wait_finished(2)
    d.stop()
    (d.state / "daemon.json").write_bytes(old)  # as a backup restore would leave it
    d.start()
    d.drop("c.txt", ["three"])
    states = d.wait_finished(3)
    assert [(s["features_file"], s["seq"]) for s in states] == [
        ("a.txt", 1),
        ("b.txt", 2),
        ("c.txt", 3),
    ]
    assert on_disk(d.state / "daemon.json")["next_seq"] == 4


def test_the_interrupted_mark_is_on_disk_before_anything_else_runs(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Recovery writes the interrupted mark of an attempt whose runner died with the daemon (a
    power cut: runners outlive a mere kill -9) at once (the paused queue runs nothing that
    would write it later); a second restart finds nothing open and marks nothing again."""
    d = make_daemon()
    go = tmp_path / "go"
    d.start()
    d.drop("i.txt", [f"long wait={go}", "next"])
    d.wait_for(
        lambda: (s := d.batch_states()) and s[0]["processing_history"], what="the attempt record"
    )
    d.ok("pause")  # survives the restarts: nothing runs after them
    d.power_cut()
    d.start()
    marked = "feature 1 attempt 1 was interrupted by the stop"
    assert d.stderr().count(marked) == 1
    [state] = d.batch_states()
    assert [(h["attempt"], h["outcome"]) for h in state["processing_history"]] == [
        (1, "interrupted")
    ]
    d.kill9()
    d.start()
    assert d.stderr().count(marked) == 1
    [state] = d.batch_states()
    assert [h["outcome"] for h in state["processing_history"]] == ["interrupted"]
    assert len([r for r in d.agent_runs() if r["event"] == "start"]) == 1
    go.touch()
    d.ok("resume", all=True)
    [state] = d.wait_finished(1)
    assert [h["outcome"] for h in state["processing_history"]] == [
        "interrupted",
        "completed",
        "completed",
    ]


def test_a_runner_trouble_pause_is_lifted_at_start_and_a_user_pause_is_not(
    make_daemon: MakeDaemon,
) -> None:
    """runner_unavailable pauses the queue; after the fix a restart (no reload, no resume)
    lifts it, on disk too, and the batch runs. A user's pause outlives a restart."""
    d = make_daemon(runner=["/nonexistent/agent", "{feature}"])
    d.start()
    d.drop("x.txt", ["one"])
    st = d.wait_for(lambda: (s := d.status())["queue_paused"] and s, what="the trouble pause")
    assert st["pause_reason"].startswith("runner_unavailable")
    d.stop()
    d.write_config(agent_command())
    d.start()
    st = d.status()
    assert (st["queue_paused"], st["pause_reason"]) == (False, None)
    saved = on_disk(d.state / "daemon.json")
    assert (saved["queue_paused"], saved["pause_reason"]) == (False, None)
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    d.ok("pause")
    d.stop()
    d.start()
    st = d.status()
    assert (st["queue_paused"], st["pause_reason"]) == (True, "user")
