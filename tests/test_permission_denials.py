"""Claude Code's permission_denials through a real daemon (SPEC section 5, issue 12 section 4).

Headless Claude Code cannot ask for permission: refused a tool, it still exits 0
with ``"is_error": false`` and lists the refusals in ``permission_denials``. The
fake agent prints such a result for the word ``denied=Write,Bash``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.harness import Daemon

MakeDaemon = Callable[..., Daemon]

ON = {"BATCH_RETRY_ENABLED": "true"}  # consent given: only the failure type stops a retry


def attempts(state: dict[str, Any], index: int) -> list[dict[str, Any]]:
    return [h for h in state["processing_history"] if h["feature_index"] == index]


def test_denied_tools_fail_the_feature_for_good(make_daemon: MakeDaemon) -> None:
    """An exit-0 result listing denied tools is failed, permanent, run once, tools and fix named."""
    d = make_daemon(env=ON)
    d.start()
    d.drop("w.txt", ["write the file denied=Write,Bash,Write", "plain next"])
    [state] = d.wait_finished(1)
    assert state["status"] == "failed"
    assert state["completed_features"] == [1]
    [attempt] = attempts(state, 0)
    assert (attempt["outcome"], attempt["failure_type"], attempt["exit_code"]) == (
        "failed",
        "permanent",
        0,
    )
    message = attempt["error_message"]
    assert message.startswith("permission denied for Write, Bash ("), message
    assert "--permission-mode or --allowedTools in runner.command" in message
    assert "runner.allow_permission_denials = true" in message
    [failed] = state["failed_features"]
    assert failed["feature_index"] == 0 and failed["retry_count"] == 0
    assert failed["error_message"] == message
    reasons = [
        e["reason"] for e in d.audit(state["batch_id"]) if e["event_type"] == "retry_decision"
    ]
    assert reasons == ["permanent_failure"]
    runs = [r for r in d.agent_runs() if r["event"] == "start"]
    assert [r["feature"] for r in runs] == ["write the file denied=Write,Bash,Write", "plain next"]


def test_allow_permission_denials_completes(make_daemon: MakeDaemon) -> None:
    """With runner.allow_permission_denials = true the same result completes."""
    d = make_daemon(env=ON)
    text = d.config_path.read_text()
    d.config_path.write_text(
        text.replace("[runner]\n", "[runner]\nallow_permission_denials = true\n", 1)
    )
    d.start()
    d.drop("w.txt", ["write the file denied=Write,Bash"])
    [state] = d.wait_finished(1)
    assert state["status"] == "completed"
    [attempt] = attempts(state, 0)
    assert (attempt["outcome"], attempt["error_message"]) == ("completed", None)
    assert attempt["cost_usd"] == 0.01
