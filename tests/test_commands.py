"""Every control command against a real daemon, through the raw protocol (issue 4)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from typing import Any

from tests.harness import Daemon, alive

MakeDaemon = Callable[..., Daemon]


def starts(d: Daemon) -> list[dict[str, Any]]:
    return [r for r in d.agent_runs() if r["event"] == "start"]


def running(d: Daemon) -> dict[str, Any]:
    """The running feature, once its runner has really started (it logged its start)."""

    def ready() -> dict[str, Any] | None:
        cur: dict[str, Any] | None = d.status()["current"]
        if cur and any(r["pid"] == cur["pid"] for r in starts(d)):
            return cur
        return None

    found: dict[str, Any] = d.wait_for(ready, what="a running feature")
    return found


def test_pause_now_resume_with_grandchildren(make_daemon: MakeDaemon) -> None:
    """pause --now kills the whole group and records interrupted; resume reruns it."""
    d = make_daemon()
    d.start()
    d.drop("p.txt", ["busy grandchild=60 sleep=60", "second"])
    cur = running(d)
    pid = cur["pid"]
    result = d.ok("pause", now=True)
    assert result["queue_paused"] is True and result["stopped_running"] is True
    assert not alive(pid)
    st = d.status()
    assert st["current"] is None and st["queue_paused"] and st["pause_reason"] == "user"
    assert json.loads((d.state / "daemon.json").read_text())["queue_paused"] is True
    [state] = d.batch_states()
    assert state["processing_history"][-1]["outcome"] == "interrupted"
    d.ok("resume", all=True)
    cur2 = running(d)
    assert cur2["feature_index"] == 0 and cur2["attempt"] == 1 and cur2["pid"] != pid
    d.ok("pause", batch_id=cur2["batch_id"], now=True)
    [state] = d.batch_states()
    assert state["status"] == "paused" and state["pause_reason"] == "user"
    assert not alive(cur2["pid"])


def test_pause_batch_lets_later_batches_run(make_daemon: MakeDaemon) -> None:
    """A paused batch is skipped; on resume it takes its place by seq again."""
    d = make_daemon()
    d.start()
    d.ok("pause")
    d.drop("a.txt", ["a1", "a2"])
    d.wait_for(lambda: len(d.batch_states()) == 1, what="a")
    d.drop("b.txt", ["b1"])
    d.wait_for(lambda: len(d.batch_states()) == 2, what="b")
    first = d.batch_states()[0]["batch_id"]
    d.ok("pause", batch_id=first)
    d.ok("resume", all=True)  # lifts the queue pause and the batch pause
    d.wait_finished(2)
    assert [r["feature"] for r in starts(d)] == ["a1", "a2", "b1"]


def test_cancel_kills_group_and_never_starts_the_rest(make_daemon: MakeDaemon) -> None:
    """cancel stops the running feature's whole group; remaining features never start."""
    d = make_daemon()
    d.start()
    d.drop("c.txt", ["long grandchild=60 sleep=60", "never"])
    cur = running(d)
    result = d.ok("cancel", batch_id=cur["batch_id"])
    assert result["status"] == "cancelled" and result["stopped_running"] is True
    assert not alive(cur["pid"])
    # "never" would have been next; a later batch runs only once the queue has moved past it.
    d.drop("later.txt", ["later"])
    cancelled, _ = d.wait_finished(2)
    assert [r["feature"] for r in starts(d)] == ["long grandchild=60 sleep=60", "later"]
    assert cancelled["status"] == "cancelled"
    again = d.request("cancel", batch_id=cur["batch_id"])
    assert again["ok"] is False and again["error"]["code"] == "bad_state"


def test_retry_runs_failed_features_again(make_daemon: MakeDaemon) -> None:
    """retry puts failed features back; they run again and the batch completes."""
    d = make_daemon()
    d.start()
    d.drop("r.txt", ["needs-fix exit=1", "fine"])
    [state] = d.wait_finished(1)
    assert state["status"] == "failed"
    # The fix: a runner under which the feature succeeds.
    d.stop()
    d.write_config(["/bin/true"])
    d.start()
    result = d.ok("retry", batch_id=state["batch_id"])
    assert result["requeued"] == [0]
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    assert sorted(state["completed_features"]) == [0, 1] and state["failed_features"] == []


def test_skip_marks_feature_skipped(make_daemon: MakeDaemon) -> None:
    """skip never runs that feature; skipping the running one stops its whole group and
    records it skipped; bad indices and ended features are refused."""
    d = make_daemon()
    d.start()
    d.drop("s.txt", ["first grandchild=60 sleep=60", "skip me", "last"])
    cur = running(d)
    bid = cur["batch_id"]
    assert d.request("skip", batch_id=bid, index=7)["error"]["code"] == "bad_args"
    assert d.ok("skip", batch_id=bid, index=1)["index"] == 1
    assert d.request("skip", batch_id=bid, index=1)["error"]["code"] == "bad_state"
    reply = d.ok("skip", batch_id=bid, index=0)  # the running one
    assert reply["stopped_running"] is True
    assert not alive(cur["pid"])
    [state] = d.wait_finished(1)
    assert state["skipped_features"] == [1, 0]
    assert state["completed_features"] == [2]
    assert state["status"] == "completed"
    assert [h["outcome"] for h in state["processing_history"]] == ["interrupted", "completed"]
    assert "skip me" not in [r["feature"] for r in starts(d)]


def test_logs_and_follow(make_daemon: MakeDaemon) -> None:
    """logs returns an attempt's output; follow streams it until the feature ends."""
    d = make_daemon()
    d.start()
    go = d.root / "go"  # the feature runs until the follow has streamed its output
    d.drop("l.txt", [f"talk stdout=hello_from_agent wait={go}"])
    cur = running(d)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(d.socket))
        req = {
            "v": 1,
            "id": 3,
            "cmd": "logs",
            "args": {"batch_id": cur["batch_id"], "follow": True},
        }
        s.sendall(json.dumps(req).encode() + b"\n")
        f = s.makefile("rb")
        text = ""
        while True:
            msg = json.loads(f.readline())
            if "event" in msg:
                text += msg["event"].get("text", "")
                if "hello from agent" in text:
                    go.touch()  # streamed while the feature still runs: now let it end
                continue
            assert msg["ok"] and msg["result"]["ended"] is True
            break
        f.close()
    assert "hello from agent" in text
    result = d.ok("logs", batch_id=cur["batch_id"], index=0)
    assert "hello from agent" in result["text"] and result["attempt"] == 1
    assert d.request("logs", batch_id=cur["batch_id"], index=5)["error"]["code"] == "bad_args"


def test_prune_removes_only_old_finished_batches(make_daemon: MakeDaemon) -> None:
    """prune deletes finished batches older than the cut and nothing else."""
    d = make_daemon()
    d.start()
    d.drop("old.txt", ["x"])
    d.wait_finished(1)
    d.ok("pause")
    d.drop("pending.txt", ["y"])
    d.wait_for(lambda: len(d.batch_states()) == 2, what="pending")
    old, pending = d.batch_states()
    assert d.ok("prune", older_than_days=1)["removed"] == []
    # Age the finished batch by rewriting its updated_at on disk, then restart.
    d.stop()
    path = d.state / "batches" / old["batch_id"] / "state.json"
    data = json.loads(path.read_text())
    data["updated_at"] = "2020-01-01T00:00:00.000000Z"
    path.write_text(json.dumps(data))
    os.chmod(path, 0o600)
    d.start()
    assert d.ok("prune", older_than_days=30)["removed"] == [old["batch_id"]]
    assert not (d.state / "batches" / old["batch_id"]).exists()
    assert [b["batch_id"] for b in d.ok("list")["batches"]] == [pending["batch_id"]]


def test_show_and_status_fields(make_daemon: MakeDaemon) -> None:
    """status has every SPEC field; show returns the stored state and retry state."""
    d = make_daemon()
    d.start()
    d.drop("f.txt", ["one claude=ok cost=0.5", "two sleep=60"])
    cur = d.wait_for(
        lambda: (c := d.status()["current"]) and c["feature_index"] == 1 and c, what="feature 2"
    )
    st = d.status()
    assert set(st["daemon"]) >= {"pid", "version", "backend", "uptime_s"}
    assert st["daemon"]["backend"] == d.backend
    for key in ("queue_paused", "pause_reason", "problems", "retry_enabled", "current", "batches"):
        assert key in st
    assert set(st["current"]) >= {"batch_id", "feature_index", "feature", "attempt", "started_at"}
    [item] = st["batches"]
    assert set(item) >= {
        "batch_id",
        "name",
        "seq",
        "status",
        "pause_reason",
        "total_features",
        "completed",
        "failed",
        "current_index",
        "retry_enabled",
        "circuit_breaker_open",
        "next_attempt_at",
        "cost_usd",
        "eta_s",
    }
    assert item["completed"] == 1 and item["cost_usd"] == 0.5 and item["eta_s"] is not None
    shown = d.ok("show", batch_id=cur["batch_id"])
    assert shown["state"]["batch_id"] == cur["batch_id"]
    assert shown["retry"]["batch_id"] == cur["batch_id"]
    assert shown["state"]["processing_history"][0]["cost_usd"] == 0.5
