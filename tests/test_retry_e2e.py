"""End to end retry, backoff, breaker, consent and audit with a real daemon (issue 5)."""

from __future__ import annotations

import json
from collections.abc import Callable

from batchd.model import parse_iso
from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]

FAST = """
[retry]
backoff_initial = 0.05
backoff_max = 0.2
jitter = "none"
"""
ON = {"BATCH_RETRY_ENABLED": "true"}


def starts(d: Daemon) -> list[dict[str, object]]:
    return [r for r in d.agent_runs() if r["event"] == "start"]


def test_transient_twice_then_success(make_daemon: MakeDaemon) -> None:
    """Two transient failures then success: attempts 1-3, retry_counts 2, audit tells it."""
    d = make_daemon(config=FAST, env=ON)
    d.start()
    d.drop("t.txt", ["flaky fail_until=3"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    hist = state["processing_history"]
    assert [(h["attempt"], h["outcome"]) for h in hist] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert all(h["failure_type"] == "transient" for h in hist[:2])
    retry = d.retry_state(state["batch_id"])
    assert retry["retry_counts"] == {"0": 2}
    assert retry["global_retry_count"] == 2
    assert retry["consecutive_failures"] == 0
    audit = d.audit(state["batch_id"])
    decisions = [e for e in audit if e["event_type"] == "retry_decision"]
    assert [e["reason"] for e in decisions] == ["under_retry_limit", "under_retry_limit"]
    assert [e["event_type"] for e in audit].count("retry_attempt") == 2
    assert {e["failure_type"] for e in decisions} == {"transient"}
    assert [r["attempt"] for r in starts(d)] == [1, 2, 3]


def test_exit_75_is_transient_and_max_retries_stops(make_daemon: MakeDaemon) -> None:
    """Exit 75 is retried up to max_per_feature, then the feature fails."""
    d = make_daemon(config=FAST.replace("[retry]", "[retry]\nmax_per_feature = 1"), env=ON)
    d.start()
    d.drop("t.txt", ["tempfail exit=75", "next"])
    [state] = d.wait_finished(1)
    assert state["status"] == "failed"
    assert [h["attempt"] for h in state["processing_history"]] == [1, 2, 1]
    [failed] = state["failed_features"]
    assert failed["feature_index"] == 0 and failed["retry_count"] == 1
    reasons = [
        e["reason"] for e in d.audit(state["batch_id"]) if e["event_type"] == "retry_decision"
    ]
    assert reasons == ["under_retry_limit", "max_retries_reached"]


def test_permanent_failure_runs_once(make_daemon: MakeDaemon) -> None:
    """A permanent failure is never retried, even with consent."""
    d = make_daemon(config=FAST, env=ON)
    d.start()
    d.drop("p.txt", ["broken exit=1 stderr=TypeError:_bad_operand"])
    [state] = d.wait_finished(1)
    assert len(state["processing_history"]) == 1
    assert state["processing_history"][0]["failure_type"] == "permanent"
    [decision] = [e for e in d.audit(state["batch_id"]) if e["event_type"] == "retry_decision"]
    assert decision["reason"] == "permanent_failure"


def test_consent_absent_means_no_retry(make_daemon: MakeDaemon) -> None:
    """Without consent a transient failure is not retried (consent_not_given)."""
    d = make_daemon(config=FAST)
    d.start()
    d.drop("c.txt", ["flaky fail_until=3"])
    [state] = d.wait_finished(1)
    assert state["status"] == "failed"
    [decision] = [e for e in d.audit(state["batch_id"]) if e["event_type"] == "retry_decision"]
    assert decision["reason"] == "consent_not_given"
    assert d.status()["retry_enabled"] is False


def test_consent_from_dotenv_and_user_state(make_daemon: MakeDaemon) -> None:
    """Consent comes from .env in the batch cwd, else user_state.json; env wins over both."""
    d = make_daemon(config=FAST)
    (d.workdir / ".env").write_text("OTHER=1\nBATCH_RETRY_ENABLED=yes\n")
    d.start()
    d.drop("a.txt", ["flaky fail_until=2"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    (d.workdir / ".env").unlink()
    assert d.ok("consent", enabled=True)["retry_enabled"] is True
    assert d.status()["retry_enabled"] is True
    d.drop("b.txt", ["flaky2 fail_until=2"])
    states = d.wait_finished(2)
    assert states[1]["status"] == "completed"
    d.stop()
    d.extra_env = {"BATCH_RETRY_ENABLED": "no"}
    d.start()
    assert d.status()["retry_enabled"] is False
    d.drop("c.txt", ["flaky3 fail_until=2"])
    states = d.wait_finished(3)
    assert states[2]["status"] == "failed"


def breaker_config(on_open: str, cooldown: float = 0) -> str:
    return (
        FAST
        + f"""max_per_feature = 0
[breaker]
threshold = 5
on_open = "{on_open}"
cooldown = {cooldown}
"""
    )


def test_breaker_continue_mode(make_daemon: MakeDaemon) -> None:
    """on_open=continue: the breaker opens at the 5th failure; the rest run, unretried."""
    d = make_daemon(config=breaker_config("continue").replace("max_per_feature = 0", ""), env=ON)
    d.start()
    d.drop("b.txt", [f"f{i} exit=1 stderr=TypeError" for i in range(5)] + ["f5 exit=75", "ok"])
    [state] = d.wait_finished(1)
    retry = d.retry_state(state["batch_id"])
    assert retry["circuit_breaker_open"] is True
    assert len(state["processing_history"]) == 7  # f5 is transient but not retried
    audit = d.audit(state["batch_id"])
    triggered = [e for e in audit if e["event_type"] == "circuit_breaker_triggered"]
    assert len(triggered) == 1 and triggered[0]["feature_index"] == 4
    last = [e for e in audit if e["event_type"] == "retry_decision"][-1]
    assert last["reason"] == "circuit_breaker_open" and last["feature_index"] == 5
    assert state["completed_features"] == [6]
    assert retry["consecutive_failures"] == 0  # the completed feature reset the run


def test_breaker_pause_mode_and_manual_reset(make_daemon: MakeDaemon) -> None:
    """on_open=pause pauses the batch at the 5th failure; reset-breaker closes and resumes."""
    d = make_daemon(config=breaker_config("pause"), env=ON)
    d.start()
    d.drop("b.txt", [f"f{i} exit=1" for i in range(5)] + ["f5"])
    st = d.wait_for(
        lambda: (s := d.status())["batches"] and s["batches"][0]["status"] == "paused" and s,
        what="breaker pause",
    )
    item = st["batches"][0]
    assert item["pause_reason"] == "breaker" and item["circuit_breaker_open"] is True
    # f5 would have been next; a later batch runs only once the queue has passed it by.
    d.drop("later.txt", ["later"])
    d.wait_for(
        lambda: [s["status"] for s in d.batch_states()] == ["paused", "completed"],
        what="the later batch done",
    )
    assert [r["feature"] for r in starts(d)] == [f"f{i} exit=1" for i in range(5)] + ["later"]
    bid = item["batch_id"]
    result = d.ok("reset-breaker", batch_id=bid)
    assert result == {"batch_id": bid, "circuit_breaker_open": False, "consecutive_failures": 0}
    [state, _] = d.wait_finished(2)
    assert state["completed_features"] == [5]
    events = [e["event_type"] for e in d.audit(bid)]
    assert events.count("circuit_breaker_reset") == 1


def test_breaker_cooldown_half_open_probe(make_daemon: MakeDaemon) -> None:
    """With a cooldown the paused batch half-opens by itself; a success closes the breaker."""
    d = make_daemon(config=breaker_config("pause", cooldown=1), env=ON)
    d.start()
    d.drop("b.txt", [f"f{i} exit=1" for i in range(5)] + ["probe"])
    [state] = d.wait_finished(1, timeout=30)
    assert state["completed_features"] == [5]
    retry = d.retry_state(state["batch_id"])
    assert retry["circuit_breaker_open"] is False
    hist = state["processing_history"]
    gap = parse_iso(hist[5]["started_at"]) - parse_iso(hist[4]["finished_at"])
    assert gap >= 0.9


def test_kill9_during_backoff_keeps_next_attempt_at(make_daemon: MakeDaemon) -> None:
    """kill -9 during a backoff wait: after restart the wait ends at the same time."""
    cfg = '[retry]\nbackoff_initial = 3\njitter = "none"\n'
    d = make_daemon(config=cfg, env=ON)
    d.start()
    go = d.root / "go"  # the first attempt fails only once the queue is paused
    d.drop("w.txt", [f"flaky fail_until=2 wait={go}"])
    d.wait_for(lambda: d.status()["running"], what="the first attempt")
    # Paused (a queue pause survives the restart, it leaves the wait alone) before the wait
    # begins, the retry cannot start while we look, however slow the machine.
    d.ok("pause")
    go.touch()
    st = d.wait_for(lambda: (s := d.status())["next_retry_at"] and s, what="a retry wait")
    at = st["next_retry_at"]
    assert st["batches"][0]["next_attempt_at"] == at
    d.kill9()
    d.start()
    assert d.status()["batches"][0]["next_attempt_at"] == at
    d.ok("resume", all=True)
    [state] = d.wait_finished(1, timeout=60)
    hist = state["processing_history"]
    assert [h["outcome"] for h in hist] == ["failed", "completed"]
    assert parse_iso(hist[1]["started_at"]) >= parse_iso(at) - 0.001
    retry = d.retry_state(state["batch_id"])
    assert retry["retry_counts"] == {"0": 1} and retry["global_retry_count"] == 1


def test_pause_and_cancel_act_at_once_during_a_wait(make_daemon: MakeDaemon) -> None:
    """During a 600 s backoff wait the API answers (a reply that waited for the wait would
    time out) and cancel ends the batch: neither its retry nor its next feature ever runs."""
    cfg = '[retry]\nbackoff_initial = 600\njitter = "none"\n'
    d = make_daemon(config=cfg, env=ON)
    d.start()
    d.drop("w.txt", ["flaky fail_until=2", "never"])
    st = d.wait_for(lambda: (s := d.status())["next_retry_at"] and s, what="a retry wait")
    bid = st["batches"][0]["batch_id"]
    assert d.ok("cancel", batch_id=bid)["status"] == "cancelled"
    [state] = d.batch_states()
    assert state["status"] == "cancelled"
    assert d.retry_state(bid)["next_attempt_at"] is None
    # A later batch runs only once the queue has passed the cancelled one by.
    d.drop("later.txt", ["later"])
    d.wait_finished(2)
    assert [r["feature"] for r in starts(d)] == ["flaky fail_until=2", "later"]


def test_secrets_and_escapes_never_reach_state_audit_or_log(make_daemon: MakeDaemon) -> None:
    """Tokens and escape sequences in runner output are scrubbed from state, audit and log."""
    tokens = [
        "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
        "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2",
        "AKIAIOSFODNN7EXAMPLE",
    ]
    leak = "\\x1b[31mConnectionError " + " ".join(tokens) + "\\r\\nforged line\\x07"
    cfg = FAST.replace("[retry]", "[retry]\nmax_per_feature = 1") + "[runner.env]\n"
    cfg += f"LEAK = {json.dumps(leak)}\n"
    d = make_daemon(config=cfg, env=ON)
    d.start()
    d.drop("s.txt", ["leak exit=75 stderr_env=LEAK"])
    [state] = d.wait_finished(1)
    d.stop()
    bdir = d.state / "batches" / state["batch_id"]
    texts = {
        "state": (bdir / "state.json").read_text(),
        "audit": (bdir / "retry_audit.jsonl").read_text(),
        "log": d.stderr(),
    }
    for where, text in texts.items():
        for token in tokens:
            assert token not in text, (where, token)
        assert "\x1b" not in text and "\\u001b" not in text and "\\u0007" not in text, where
    message = state["processing_history"][0]["error_message"]
    assert "[REDACTED]" in message and "ConnectionError" in message
    assert "\r" not in message and "\n" not in message
    assert "forged line" in texts["log"]  # on the same line as the rest, not a new one
    assert all(
        "forged line" not in line or "ConnectionError" in line for line in texts["log"].splitlines()
    )
    # The raw attempt log keeps the raw output (0600).
    assert tokens[0] in (bdir / "logs" / "0.1.log").read_text()
