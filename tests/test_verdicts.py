"""What an attempt means, judged from the agents' own words (SPEC 6, 13). Pure.

The real outputs of ``tests/data/agents/`` verbatim, the usage-limit texts of
SPEC 13 with their reset times, the login texts, the network texts, Claude's
result subtypes and API statuses, and the texts that must not count as limits.
``now`` and the local zone are fixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from batchd.classify import (
    Classifier,
    OutputFormat,
    RawResult,
    RunnerTraits,
    Verdict,
    retry_hint,
)
from batchd.config import RunnerConfig
from batchd.knownfailures import NETWORK_TRANSIENT

AGENTS = Path(__file__).resolve().parent / "data" / "agents"
NOW = 1795496400.0  # 2026-11-24T05:00:00Z
BERLIN = ZoneInfo("Europe/Berlin")
C = Classifier.build()
CLAUDE = RunnerTraits(program="claude", user="alice")
CODEX = RunnerTraits(output_format="codex-jsonl", program="codex", user="alice")
LAST_CODEX_ERROR = "Reconnecting... waiting for network (Connection failed: error sending request)"


def agent_file(name: str) -> bytes:
    return (AGENTS / name).read_bytes()


def judge(traits: RunnerTraits = CLAUDE, classifier: Classifier = C, **raw: Any) -> Verdict:
    return classifier.judge(RawResult(**raw), traits, now=NOW, zone=BERLIN)


def claude_result(text: str, **fields: Any) -> bytes:
    obj = {"type": "result", "subtype": "success", "is_error": True, "result": text}
    obj.update(fields)
    return b"transcript\n" + json.dumps(obj).encode() + b"\n"


def codex_events(*objs: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


# --- the real files ----------------------------------------------------------------


def test_claude_not_logged_in_is_login_trouble_charging_nothing() -> None:
    """The real logged-out result (exit 1): agent_login, not a failure, with how to log in
    as the daemon's user; the session id is kept."""
    v = judge(exit_code=1, stdout_tail=agent_file("claude-2.1.328-not-logged-in.json"))
    assert (v.outcome, v.failure_type, v.trouble) == ("interrupted", None, "agent_login")
    assert v.message == (
        "claude is not logged in (Not logged in · Please run /login): run `claude` once in a "
        "terminal as alice and type /login, or put ANTHROPIC_API_KEY in "
        "~/.config/batchd/environment (the batchd service's EnvironmentFile)"
    )
    assert v.session_id == "152f20d2-9001-4d04-afc2-787db10268c5"


def test_claude_offline_is_a_transient_network_failure() -> None:
    """The real result after Claude's own retries gave up offline: transient."""
    v = judge(exit_code=1, stdout_tail=agent_file("claude-2.1.328-offline-final.json"))
    assert (v.outcome, v.failure_type, v.trouble) == ("failed", "transient", None)
    assert v.message == (
        "agent reported an error: API Error: Can't reach the API server — check your "
        "internet or DNS (ENOTFOUND)"
    )
    assert v.session_id == "6f0e8161-c557-4795-8f26-087954092346"


def test_claude_stream_without_a_result_is_judged_by_its_exit_code() -> None:
    """The api_retry stream (no result line) is neither a result nor a codex stream."""
    stream = agent_file("claude-2.1.328-offline-stream.jsonl")
    assert judge(exit_code=0, stdout_tail=stream).outcome == "completed"
    v = judge(RunnerTraits(output_format="claude-json"), exit_code=0, stdout_tail=stream)
    assert (v.outcome, v.message) == ("failed", "no Claude result on stdout (exit code 0)")


@pytest.mark.parametrize("traits", [CODEX, CLAUDE])  # codex-jsonl, and recognised by auto
@pytest.mark.parametrize(
    ("code", "message"),
    [
        (0, "codex reported an error and its turn did not complete: " + LAST_CODEX_ERROR),
        (1, "exit code 1: " + LAST_CODEX_ERROR),
    ],
)
def test_codex_offline_fails_transient_with_its_last_error(
    traits: RunnerTraits, code: int, message: str
) -> None:
    """The real offline stream, on exit 0 (codex exits 0 on Ctrl+C) or 1: failed,
    transient, carrying the last error event; the thread is the session."""
    v = judge(traits, exit_code=code, stdout_tail=agent_file("codex-0.169.0-offline.jsonl"))
    assert (v.outcome, v.failure_type, v.message) == ("failed", "transient", message)
    assert v.session_id == "01a24526-02bc-7300-9bf7-32a40f403d47"
    assert v.tokens_estimated


def test_codex_offline_then_completed_is_completed_with_its_tokens() -> None:
    """The same stream followed by a turn.completed: the errors were notices."""
    data = agent_file("codex-0.169.0-offline.jsonl") + codex_events(
        {"type": "turn.completed", "usage": {"input_tokens": 1200, "output_tokens": 34}}
    )
    for traits in (CODEX, CLAUDE):
        v = judge(traits, exit_code=0, stdout_tail=data, output_bytes=len(data))
        assert (v.outcome, v.tokens, v.tokens_estimated, v.message) == (
            "completed",
            1234,
            False,
            None,
        )


# --- usage limits ------------------------------------------------------------------


def utc(text: str) -> float:
    from datetime import UTC, datetime

    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "until"),
    [
        ("You've hit your limit · resets 10pm (America/New_York)", utc("2026-11-25T03:00")),
        ("You've hit your session limit · resets 3am (Europe/Berlin)", utc("2026-11-25T02:00")),
        (
            "You've hit your weekly limit · resets Dec 6, 9am (Europe/Berlin)",
            utc("2026-12-06T08:00"),
        ),
        ("You're out of extra usage · resets 5pm (UTC)", utc("2026-11-24T17:00")),
        ("You've hit your limit · resets 10:30pm", utc("2026-11-24T21:30")),
        ("Claude AI usage limit reached|1795500000", 1795500000.0),
        ("You've hit your limit", None),
    ],
)
def test_claude_usage_limits_are_limited_with_the_reset_time(
    text: str, until: float | None
) -> None:
    """Each Claude form in the result (exit 1): limited, not a failure, the reset time
    read (None when the text has none), the text as the message."""
    v = judge(exit_code=1, stdout_tail=claude_result(text, session_id="s-1"))
    assert (v.outcome, v.failure_type, v.limit_until, v.message) == ("limited", None, until, text)
    assert v.session_id == "s-1" and v.notes == ()


def test_codex_usage_limit_in_an_error_event() -> None:
    """codex's limit as an error event, then the end of the stream: limited, reset in
    2 days 17 hours 14 minutes (not 2 seconds)."""
    text = (
        "You've hit your usage limit. Upgrade to Pro (https://openai.com/chatgpt/pricing) "
        "or try again in 2 days 17 hours 14 minutes."
    )
    stream = codex_events(
        {"type": "thread.started", "thread_id": "th-9"},
        {"type": "turn.started"},
        {"type": "error", "message": text},
    )
    for code in (0, 1):
        v = judge(CODEX, exit_code=code, stdout_tail=stream)
        assert (v.outcome, v.limit_until, v.message) == ("limited", NOW + 234840, text)
    failed = codex_events({"type": "turn.failed", "error": {"message": text}})
    assert judge(CODEX, exit_code=0, stdout_tail=failed).outcome == "limited"
    at = "You've hit your usage limit. Try again at 3:45 PM."
    v = judge(CODEX, exit_code=1, stdout_tail=codex_events({"type": "error", "message": at}))
    assert v.limit_until == utc("2026-11-24T14:45")  # local (Berlin) time


def test_a_limit_on_stderr_of_a_plain_runner_and_an_unknown_zone() -> None:
    """The stderr tail is the classified text without a result; an unknown zone is read
    as local and the verdict carries a note for the log."""
    v = judge(exit_code=1, stderr_tail=b"You've hit your limit \xc2\xb7 resets 10pm (Mars/Base)\n")
    assert (v.outcome, v.limit_until) == ("limited", utc("2026-11-24T21:00"))
    assert v.notes == ("unknown time zone 'Mars/Base' in a reset time: read as local time",)


def test_without_now_a_limit_has_no_reset_time() -> None:
    """judge(raw, format) without now (the older call): limited, limit_until None."""
    v = C.judge(
        RawResult(exit_code=1, stdout_tail=claude_result("You've hit your limit · resets 10pm")),
        "auto",
    )
    assert (v.outcome, v.limit_until) == ("limited", None)


def test_usage_and_login_patterns_from_the_config() -> None:
    """limits.usage_patterns and limits.login_patterns add to the built-in texts."""
    c = Classifier.build(
        usage_patterns=[r"monthly quota exhausted"], login_patterns=[r"sign in again"]
    )
    v = judge(classifier=c, exit_code=1, stderr_tail=b"Monthly quota exhausted; retry after 1 hour")
    assert (v.outcome, v.limit_until) == ("limited", NOW + 3600)
    v = judge(classifier=c, exit_code=1, stderr_tail=b"session expired: Sign in again")
    assert v.trouble == "agent_login"
    assert judge(exit_code=1, stderr_tail=b"Monthly quota exhausted").outcome == "failed"


@pytest.mark.parametrize(
    ("raw", "outcome", "ftype"),
    [
        # A rate limit is not a usage limit: transient, with its hint.
        (
            {"exit_code": 1, "stderr_tail": b"rate limit exceeded, retry after 30 seconds"},
            "failed",
            "transient",
        ),
        # The transcript on stdout is never the classified text.
        (
            {
                "exit_code": 1,
                "stdout_tail": b"Claude said: You've hit your usage limit\n",
                "stderr_tail": b"TypeError: x",
            },
            "failed",
            "permanent",
        ),
        (
            {
                "exit_code": 0,
                "stdout_tail": b"You've hit your limit \xc2\xb7 resets 10pm\n"
                + claude_result("done, documented usage limit reached handling", is_error=False),
            },
            "completed",
            None,
        ),
        (
            {
                "exit_code": 0,
                "stdout_tail": codex_events(
                    {
                        "type": "item.completed",
                        "item": {"type": "agent_message", "text": "You've hit your usage limit"},
                    },
                    {"type": "turn.completed", "usage": {"input_tokens": 1, "output_tokens": 1}},
                ),
            },
            "completed",
            None,
        ),
    ],
)
def test_texts_that_are_not_usage_limits(
    raw: dict[str, Any], outcome: str, ftype: str | None
) -> None:
    """A rate limit stays a transient failure; a limit mentioned in stdout counts for nothing."""
    v = judge(**raw)
    assert (v.outcome, v.failure_type, v.limit_until) == (outcome, ftype, None)


def test_a_rate_limit_keeps_its_retry_hint() -> None:
    """The transient rate limit's hint is read from the verdict's text."""
    v = judge(exit_code=1, stderr_tail=b"rate limit exceeded, retry after 30 seconds")
    assert retry_hint(v.hint_text, NOW) == 30.0


# --- logged out --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("traits", "raw", "how"),
    [
        (
            CODEX,
            {
                "exit_code": 1,
                "stdout_tail": codex_events(
                    {
                        "type": "error",
                        "message": "unexpected status 401 Unauthorized: Missing bearer",
                    }
                ),
            },
            "run `codex login` as alice, or put OPENAI_API_KEY in ~/.config/batchd/environment",
        ),
        (
            RunnerTraits(program="/usr/local/bin/codex", user="bob"),
            {"exit_code": 1, "stderr_tail": b"Error: Not logged in\n"},
            "run `codex login` as bob",
        ),
        (
            RunnerTraits(program="my-agent", user="bob"),
            {"exit_code": 1, "stderr_tail": b"Invalid API key \xc2\xb7 Please run /login"},
            "log the agent in as bob, or put its API key in ~/.config/batchd/environment",
        ),
    ],
)
def test_login_texts_say_how_to_log_in(traits: RunnerTraits, raw: dict[str, Any], how: str) -> None:
    """codex's 401 and "Not logged in", and other agents: agent_login, the fix for the
    agent the output or the program names."""
    v = judge(traits, **raw)
    assert (v.outcome, v.failure_type, v.trouble) == ("interrupted", None, "agent_login")
    assert v.message is not None and how in v.message


def test_traits_come_from_the_runner_profile() -> None:
    """RunnerTraits.of takes what judging needs from a [runner] or [runners.NAME]."""
    runner = RunnerConfig(command=["codex", "exec"], output_format="codex-jsonl", stall_timeout=30)
    assert RunnerTraits.of(runner, "alice") == RunnerTraits(
        output_format="codex-jsonl",
        timeout_s=7200,
        stall_timeout_s=30,
        program="codex",
        user="alice",
    )


# --- network, Claude's subtypes and statuses -----------------------------------------

NETWORK_TEXTS = {
    r"can(?:'|\u2019)?t reach the api": "API Error: Can’t reach the API server",
    r"\benotfound\b": "getaddrinfo ENOTFOUND api.anthropic.com",
    r"\beai_again\b": "getaddrinfo EAI_AGAIN api.anthropic.com",
    r"\beconnreset\b": "read ECONNRESET",
    r"\beconnrefused\b": "connect ECONNREFUSED 127.0.0.1:443",
    r"\betimedout\b": "connect ETIMEDOUT 1.2.3.4:443",
    r"stream disconnected": "stream disconnected before completion",
    r"failed to lookup address": "failed to lookup address information: Name does not resolve",
    r"error sending request": "Connection failed: error sending request for url",
    r"api error: 5\d\d": "API Error: 503 upstream",
    r"internal server error": "500 Internal Server Error",
}


def test_network_table_covers_the_list() -> None:
    """The table below has one text per network pattern of SPEC 6."""
    assert set(NETWORK_TEXTS) == set(NETWORK_TRANSIENT)


@pytest.mark.parametrize("text", NETWORK_TEXTS.values())
def test_network_texts_are_transient(text: str) -> None:
    """Each network text, as a Claude result and on stderr: transient."""
    assert judge(exit_code=1, stdout_tail=claude_result(text)).failure_type == "transient"
    assert judge(exit_code=1, stderr_tail=text.encode()).failure_type == "transient"


@pytest.mark.parametrize(
    ("subtype", "flag"),
    [("error_max_turns", "--max-turns"), ("error_max_budget_usd", "--max-budget-usd")],
)
def test_claude_caps_are_permanent_naming_the_flag(subtype: str, flag: str) -> None:
    """A turn or budget cap fails the attempt (even with is_error false and exit 0),
    permanent, naming the subtype and the flag of runner.command to raise."""
    out = b'{"type":"result","subtype":"%s","is_error":false,"session_id":"s"}\n' % subtype.encode()
    v = judge(exit_code=0, stdout_tail=out)
    assert (v.outcome, v.failure_type) == ("failed", "permanent")
    assert (
        v.message is not None
        and subtype in v.message
        and f"raise {flag} in runner.command" in v.message
    )


def test_error_during_execution_is_classified_from_its_text() -> None:
    """error_during_execution: a failure whatever is_error says, classed by its text."""
    v = judge(
        exit_code=0,
        stdout_tail=claude_result(
            "ConnectionError: reset", is_error=False, subtype="error_during_execution"
        ),
    )
    assert (v.outcome, v.failure_type) == ("failed", "transient")
    assert v.message == "agent reported error_during_execution: ConnectionError: reset"
    v = judge(exit_code=0, stdout_tail=b'{"type":"result","subtype":"error_during_execution"}')
    assert (v.failure_type, v.message) == (
        "permanent",
        "agent reported error_during_execution",
    )


@pytest.mark.parametrize(
    ("status", "ftype"),
    [
        (429, "transient"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (529, "transient"),
        (400, "permanent"),
    ],
)
def test_api_error_status(status: int, ftype: str) -> None:
    """api_error_status 429, 500, 502, 503, 529 are transient whatever the text says."""
    v = judge(exit_code=1, stdout_tail=claude_result("API Error", api_error_status=status))
    assert (v.outcome, v.failure_type) == ("failed", ftype)


def test_session_ids_that_do_not_look_like_one_are_dropped() -> None:
    """A session id is kept only as a plain token: it is printed in a resume command."""
    ok = claude_result("done", is_error=False, session_id="6f0e8161-c557-4795")
    assert judge(exit_code=0, stdout_tail=ok).session_id == "6f0e8161-c557-4795"
    bad = claude_result("done", is_error=False, session_id="x; rm -rf ~")
    assert judge(exit_code=0, stdout_tail=bad).session_id is None


@pytest.mark.parametrize("fmt", ["text", "claude-json"])
def test_codex_events_count_only_where_the_format_allows(fmt: OutputFormat) -> None:
    """output_format text or claude-json: a codex stream is not read."""
    stream = agent_file("codex-0.169.0-offline.jsonl")
    v = judge(RunnerTraits(output_format=fmt), exit_code=0, stdout_tail=stream)
    assert v.session_id is None
    assert v.outcome == ("completed" if fmt == "text" else "failed")


def test_codex_jsonl_without_events_fails() -> None:
    """codex-jsonl requires the stream, as claude-json requires the result."""
    v = judge(CODEX, exit_code=0, stdout_tail=b"plain text\n")
    assert (v.outcome, v.message) == ("failed", "no codex events on stdout (exit code 0)")
