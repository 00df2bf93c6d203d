"""The real agents' own words through real daemons, on both backends (SPEC 6, 13; issue 25).

Every runner prints a file of ``tests/data/agents/`` (the agents' whole stdout,
verbatim) with the fake agent's ``print=``, and exits with the status the real
agent had; ``once=PATH`` makes the trouble pass, as a login or the network
coming back does. The feature text reaches the agent as one argv word.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchd.model import parse_iso
from tests.harness import Daemon
from tests.test_limits_e2e import CODEX, all_paused, codex_events, drop_together, starts

MakeDaemon = Callable[..., Daemon]

AGENTS = Path(__file__).resolve().parent / "data" / "agents"
NOT_LOGGED_IN = AGENTS / "claude-2.1.328-not-logged-in.json"
OFFLINE_FINAL = AGENTS / "claude-2.1.328-offline-final.json"
CODEX_OFFLINE = AGENTS / "codex-0.169.0-offline.jsonl"
CODEX_THREAD = "01a24526-02bc-7300-9bf7-32a40f403d47"
CODEX_LAST_ERROR = "Reconnecting... waiting for network (Connection failed: error sending request)"
ON = {"BATCH_RETRY_ENABLED": "true"}


def history(state: dict[str, Any]) -> list[tuple[int, int, str | None, str | None]]:
    return [
        (h["feature_index"], h["attempt"], h["outcome"], h["failure_type"])
        for h in state["processing_history"]
    ]


def test_a_logged_out_claude_pauses_its_profile_and_resume_goes_on(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Claude's real 'Not logged in' result, exit 1: nothing charged, both batches of the
    profile pause with agent_login and how to log in as the daemon's user (or where the API
    key goes); the codex batch goes on; after the login `batchctl resume --all` completes
    both, the first feature still on attempt 1."""
    d = make_daemon(config=CODEX)
    other = tmp_path / "other"
    other.mkdir()
    d.start()
    drop_together(
        d,
        {
            "a.txt": [f"once={tmp_path / 'login'} print={NOT_LOGGED_IN} exit=1", "second"],
            "b.txt": [f"# batchd: cwd = {other}", "same profile"],
        },
    )
    paused = d.wait_for(
        lambda: all_paused(d),
        what="the profile's batches paused",
    )
    user = pwd.getpwuid(os.getuid()).pw_name
    for b in paused:
        reason = b["pause_reason"]
        assert reason == (
            "agent_login: runner profile 'default': claude is not logged in (Not logged in "
            f"\u00b7 Please run /login): run `claude` once in a terminal as {user} and type "
            "/login, or put ANTHROPIC_API_KEY in ~/.config/batchd/environment (the batchd "
            "service's EnvironmentFile); then `batchctl resume --all`"
        )
    first = d.batch_states()[0]
    assert history(first) == [(0, 1, "interrupted", None)]
    retry = d.retry_state(first["batch_id"])
    assert retry["retry_counts"] == {} and retry["consecutive_failures"] == 0
    said = " ".join(d.ctl("status").stdout.split())
    assert "paused: agent_login: runner profile 'default': claude is not logged in" in said
    assert "type /login" in said and said.endswith("then `batchctl resume --all`")

    d.drop("c.txt", ["# batchd: runner = codex", f"print={codex_done_after_offline(tmp_path)}"])
    d.wait_for(
        lambda: any(
            s["runner"] == "codex" and s["status"] == "completed" for s in d.batch_states()
        ),
        what="the codex batch, while claude is logged out",
    )
    resumed = d.ctl("resume", "--all")
    assert resumed.returncode == 0, resumed.stderr
    states = d.wait_finished(3)
    assert [s["status"] for s in states] == ["completed"] * 3
    assert history(states[0]) == [
        (0, 1, "interrupted", None),
        (0, 1, "completed", None),
        (1, 1, "completed", None),
    ]
    assert [r["attempt"] for r in starts(d, states[0]["batch_id"])] == [1, 1, 1]


def test_claude_offline_is_transient_and_retried_after_its_backoff(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Claude's real 'Can't reach the API server (ENOTFOUND)' result, exit 1, with consent:
    failed transient with the agent's text, retried after backoff_initial, then completed."""
    config = '[retry]\nbackoff_initial = 1\njitter = "none"\n'
    d = make_daemon(config=config, env=ON)
    d.start()
    d.drop("n.txt", [f"once={tmp_path / 'net'} print={OFFLINE_FINAL} exit=1"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    assert history(state) == [(0, 1, "failed", "transient"), (0, 2, "completed", None)]
    failed = state["processing_history"][0]
    assert failed["error_message"] == (
        "agent reported an error: API Error: Can't reach the API server \u2014 check your "
        "internet or DNS (ENOTFOUND)"
    )
    assert failed["session_id"] == "6f0e8161-c557-4795-8f26-087954092346"
    decisions = [e for e in d.audit(state["batch_id"]) if e["event_type"] == "retry_decision"]
    assert [(e["reason"], e["failure_type"]) for e in decisions] == [
        ("under_retry_limit", "transient")
    ]
    assert d.retry_state(state["batch_id"])["retry_counts"] == {"0": 1}
    first_end = parse_iso(failed["finished_at"])
    assert starts(d)[1]["t"] >= first_end + 1.0


@pytest.mark.parametrize("code", [0, 1])
def test_codex_offline_fails_transient_with_its_last_error(
    make_daemon: MakeDaemon, code: int
) -> None:
    """codex's real offline stream (reconnect notices, no turn.completed), exit 0 (as after
    Ctrl+C) or 1: failed, transient, carrying the stream's last error, not just the exit."""
    d = make_daemon(config=CODEX)
    d.start()
    d.drop("x.txt", ["# batchd: runner = codex", f"print={CODEX_OFFLINE} exit={code}"])
    [state] = d.wait_finished(1)
    assert state["status"] == "failed"
    [attempt] = state["processing_history"]
    assert (attempt["outcome"], attempt["failure_type"]) == ("failed", "transient")
    why = "codex reported an error and its turn did not complete" if code == 0 else "exit code 1"
    assert attempt["error_message"] == f"{why}: {CODEX_LAST_ERROR}"
    assert attempt["session_id"] == CODEX_THREAD


def codex_done_after_offline(tmp_path: Path) -> Path:
    return codex_events(
        tmp_path / "turn-completed.jsonl",
        {"type": "turn.completed", "usage": {"input_tokens": 40, "output_tokens": 2}},
    )


def test_codex_reconnects_then_completes_with_its_tokens(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """The real offline stream, then a turn.completed, exit 0: completed, 42 tokens counted
    from the usage (not estimated), the thread id as the session; `batchctl logs` names it."""
    d = make_daemon(config=CODEX)
    d.start()
    done = codex_done_after_offline(tmp_path)
    d.drop("r.txt", ["# batchd: runner = codex", f"print={CODEX_OFFLINE},{done}"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    [attempt] = state["processing_history"]
    assert (attempt["tokens"], attempt["tokens_estimated"]) == (42, False)
    assert attempt["session_id"] == CODEX_THREAD
    log = d.state / "batches" / state["batch_id"] / "logs" / "0.1.log"
    assert log.read_bytes() == CODEX_OFFLINE.read_bytes() + done.read_bytes()
    shown = json.loads(d.ctl("--json", "show", state["batch_id"]).stdout)
    assert shown["state"]["processing_history"][0]["session_id"] == CODEX_THREAD
    logs = d.ctl("logs", state["batch_id"])
    assert logs.stdout.encode() == log.read_bytes()
    assert f"batchctl: the agent's session is {CODEX_THREAD} (resume it: " in logs.stderr
    assert f"`codex resume {CODEX_THREAD}`" in logs.stderr
    every = d.ctl("logs", state["batch_id"], "0", "--all").stdout.splitlines()[0]
    assert every == f"==> feature 1 (index 0), attempt 1, session {CODEX_THREAD}: {log} <=="
