"""Outcome, classification, retry hints and the sanitiser (SPEC sections 5 and 6). Pure.

Everything goes through ``Classifier.judge`` with a ``RawResult``, the way the
runner hands an attempt over; time is injected into ``retry_hint``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from batchd.agents import parse_claude_result
from batchd.classify import (
    TRUNCATED,
    Classifier,
    OutputFormat,
    RawResult,
    Verdict,
    retry_hint,
    sanitize,
)
from batchd.knownfailures import CLUSTER_END_STATES, SEED_PERMANENT, SEED_TRANSIENT

C = Classifier.build()
NOW = 1795496400.0  # 2026-11-24T05:00:00Z

# SPEC section 6, the seed's list plus `overloaded` and `rate[ _-]?limit`: pattern -> a
# realistic line of stderr that only it needs to match.
TRANSIENT_TABLE = {
    r"connectionerror": "requests.exceptions.ConnectionError: Max retries exceeded",
    r"timeouterror": "asyncio.TimeoutError",
    r"ratelimiterror": "anthropic.RateLimitError: Error code 429",
    r"networkerror": "NetworkError when attempting to fetch resource",
    r"httperror.*50[234]": "urllib.error.HTTPError: HTTP Error 503: Service busy",
    r"httperror.*429": "HTTPError: 429 Client Error",
    r"temporaryfailure": "TemporaryFailure: try later",
    r"service.*unavailable": "503 Service Unavailable",
    r"bad.*gateway": "502 Bad Gateway",
    r"gateway.*timeout": "504 Gateway Timeout",
    r"too.*many.*requests": "429 Too Many Requests",
    r"connection.*refused": "connect: Connection refused",
    r"connection.*reset": "read: connection reset by peer",
    r"operation.*timed.*out": "curl: (28) Operation timed out after 30000 ms",
    r"timed.*out": "the request timed out",
    r"network.*unreachable": "connect: Network is unreachable",
    r"overloaded": 'API Error: 529 {"type":"overloaded_error"}',
    r"rate[ _-]?limit": "you hit the rate-limit",
}
PERMANENT_TABLE = {
    r"syntaxerror": "SyntaxError: invalid syntax",
    r"importerror": "ImportError: cannot import name 'x'",
    r"typeerror": "TypeError: unsupported operand type(s)",
    r"nameerror": "NameError: name 'foo' is not defined",
    r"attributeerror": "AttributeError: 'NoneType' object has no attribute 'x'",
    r"valueerror": "ValueError: invalid literal for int()",
    r"indentationerror": "IndentationError: unexpected indent",
    r"keyerror": "KeyError: 'missing'",
    r"indexerror": "IndexError: list index out of range",
    r"assertionerror": "AssertionError: 1 != 2",
    r"modulenotfounderror": "ModuleNotFoundError: No module named 'nope'",
    r"filenotfounderror": "FileNotFoundError: [Errno 2] No such file",
    r"permissionerror": "PermissionError: [Errno 13] Permission denied",
    r"zerodivisionerror": "ZeroDivisionError: division by zero",
    r"notimplementederror": "NotImplementedError",
    r"recursionerror": "RecursionError: maximum recursion depth exceeded",
}


def result_line(**fields: Any) -> bytes:
    obj: dict[str, Any] = {"type": "result", "subtype": "success", "is_error": False}
    obj.update(fields)
    return json.dumps(obj).encode()


def claude(
    is_error: bool, text: str = "done", cost: float | None = 0.5, usage: Any = None
) -> bytes:
    """An agent transcript followed by Claude Code's headless result line."""
    if usage is None:
        usage = {"input_tokens": 10, "output_tokens": 5}
    extra: dict[str, Any] = {"is_error": is_error, "result": text, "usage": usage}
    if cost is not None:
        extra["total_cost_usd"] = cost
    return b'{"type":"assistant"}\nfixed a TypeError in foo.py\n' + result_line(**extra) + b"\n\n"


def judge(fmt: OutputFormat = "auto", classifier: Classifier = C, **raw: Any) -> Verdict:
    return classifier.judge(RawResult(**raw), fmt)


# --- the seed's lists, table-driven ----------------------------------------------


def test_tables_cover_exactly_the_seed_lists() -> None:
    """The built-in lists are the SPEC's, no more and no fewer."""
    assert set(SEED_TRANSIENT) == set(TRANSIENT_TABLE)
    assert set(SEED_PERMANENT) == set(PERMANENT_TABLE)
    assert set(CLUSTER_END_STATES) == set(CLUSTER_TABLE)


@pytest.mark.parametrize(("pattern", "text"), TRANSIENT_TABLE.items(), ids=TRANSIENT_TABLE)
def test_transient_pattern_on_stderr(pattern: str, text: str) -> None:
    """Each transient pattern of SPEC section 6 on stderr makes a failure transient."""
    assert re.search(pattern, text.lower())
    v = judge(exit_code=1, stderr_tail=f"Traceback...\n{text}\n".encode())
    assert (v.outcome, v.failure_type) == ("failed", "transient")
    assert v.message is not None and v.message.startswith("exit code 1: ")


@pytest.mark.parametrize(("pattern", "text"), PERMANENT_TABLE.items(), ids=PERMANENT_TABLE)
def test_permanent_pattern_on_stderr(pattern: str, text: str) -> None:
    """Each permanent pattern of SPEC section 6 on stderr makes a failure permanent."""
    assert re.search(pattern, text.lower())
    v = judge(exit_code=1, stderr_tail=text.encode())
    assert (v.outcome, v.failure_type) == ("failed", "permanent")


@pytest.mark.parametrize(("pattern", "text"), PERMANENT_TABLE.items(), ids=PERMANENT_TABLE)
def test_transient_is_checked_before_permanent(pattern: str, text: str) -> None:
    """Text matching both lists is transient: the transient list is checked first."""
    v = judge(exit_code=1, stderr_tail=f"{text}\nthen: Connection reset".encode())
    assert v.failure_type == "transient"


def test_unmatched_text_and_no_text_are_permanent() -> None:
    """Anything the lists do not match is permanent, including empty stderr."""
    assert judge(exit_code=1, stderr_tail=b"something odd").failure_type == "permanent"
    v = judge(exit_code=2)
    assert (v.outcome, v.failure_type, v.message) == ("failed", "permanent", "exit code 2")


def test_config_patterns_extend_the_lists() -> None:
    """classify.transient_patterns / permanent_patterns add to the built-in lists."""
    custom = Classifier.build(transient_patterns=["quota"], permanent_patterns=["timed out"])
    assert judge(classifier=custom, exit_code=1, stderr_tail=b"Quota hit").failure_type == (
        "transient"
    )
    # The built-in transient list still runs first.
    assert judge(classifier=custom, exit_code=1, stderr_tail=b"timed out").failure_type == (
        "transient"
    )


# --- step 1: exit codes, timeouts, signals ----------------------------------------


def test_exit_75_is_transient_whatever_the_text() -> None:
    """Exit code 75 (EX_TEMPFAIL) is transient even when stderr reads like a code bug."""
    v = judge(exit_code=75, stderr_tail=b"TypeError: x")
    assert (v.outcome, v.failure_type) == ("failed", "transient")


def test_transient_exit_codes_come_from_config() -> None:
    """classify.transient_exit_codes replaces the default [75]."""
    custom = Classifier.build(transient_exit_codes=[3])
    assert judge(classifier=custom, exit_code=3).failure_type == "transient"
    assert judge(classifier=custom, exit_code=75).failure_type == "permanent"


def test_timeout_is_timed_out_and_transient() -> None:
    """A timed-out attempt has outcome timed_out and is transient, whatever stderr says."""
    v = judge(exit_code=None, timed_out=True, stderr_tail=b"SyntaxError")
    assert (v.outcome, v.failure_type) == ("timed_out", "transient")
    assert v.message == "timed out: SyntaxError"


def test_foreign_signal_is_transient() -> None:
    """Killed by a signal batchd did not send: a transient failure."""
    v = judge(exit_code=None, signal=9, stderr_tail=b"ValueError")
    assert (v.outcome, v.failure_type) == ("failed", "transient")
    assert v.message is not None and v.message.startswith("killed by signal 9")


def test_interrupted_is_not_a_failure() -> None:
    """An attempt stopped by batchd is interrupted: no failure type, nothing to classify."""
    v = judge(exit_code=None, interrupted=True, timed_out=True, stderr_tail=b"TypeError")
    assert (v.outcome, v.failure_type) == ("interrupted", None)


# SPEC section 12: a cluster job's end state -> (outcome, failure type, the state named).
CLUSTER_TABLE = {
    "TIMEOUT": ("timed_out", "transient"),
    "NODE_FAIL": ("failed", "transient"),
    "PREEMPTED": ("failed", "transient"),
    "BOOT_FAIL": ("failed", "transient"),
    "CANCELLED": ("failed", "transient"),
    "OUT_OF_MEMORY": ("failed", "permanent"),
}


@pytest.mark.parametrize(("state", "expected"), CLUSTER_TABLE.items(), ids=CLUSTER_TABLE)
def test_cluster_end_state_decides_whatever_the_exit(state: str, expected: tuple[str, str]) -> None:
    """Each special Slurm end state of SPEC 12 decides the outcome, even with exit 0, naming it."""
    for exit_code in (0, 1, None):
        v = judge(exit_code=exit_code, cluster_state=state, stderr_tail=b"SyntaxError: x")
        assert (v.outcome, v.failure_type) == expected
        assert v.message is not None and f"({state})" in v.message
        assert v.message.endswith(": SyntaxError: x")


def test_cluster_states_beyond_the_table_leave_it_to_the_exit_code() -> None:
    """COMPLETED, FAILED or an unknown state: the exit status and the text decide as for a local run."""
    for state in ("COMPLETED", "FAILED", "SOMETHING_NEW", None):
        assert judge(exit_code=0, cluster_state=state).outcome == "completed"
        v = judge(exit_code=1, cluster_state=state, stderr_tail=b"ConnectionError")
        assert (v.outcome, v.failure_type) == ("failed", "transient")
        assert v.message is not None and v.message.startswith("exit code 1")


def test_a_cancel_batchd_asked_for_is_not_a_failure() -> None:
    """CANCELLED after batchd's own stop or timeout is interrupted or timed_out, not a failure."""
    v = judge(exit_code=None, interrupted=True, cluster_state="CANCELLED")
    assert (v.outcome, v.failure_type) == ("interrupted", None)
    v = judge(exit_code=None, timed_out=True, cluster_state="CANCELLED")
    assert (v.outcome, v.failure_type, v.message) == ("timed_out", "transient", "timed out")


def test_exit_zero_without_result_completes() -> None:
    """Exit 0 and no Claude result: completed in auto and text; tokens are output/4."""
    for fmt in ("auto", "text"):
        v = judge(fmt, exit_code=0, stdout_tail=b"all good\n", output_bytes=400)
        assert v == Verdict("completed", None, None, 100, None, v.hint_text, tokens_estimated=True)


# --- Claude Code's result line -------------------------------------------------


def test_claude_success_records_tokens_and_cost() -> None:
    """A result without is_error and exit 0 completes; usage tokens and cost are kept."""
    v = judge(exit_code=0, stdout_tail=claude(False), output_bytes=10_000)
    assert (v.outcome, v.failure_type, v.tokens, v.cost_usd) == ("completed", None, 15, 0.5)


def test_claude_is_error_with_exit_zero_is_a_failure() -> None:
    """is_error true fails the attempt even with exit 0; the result text is classified."""
    v = judge(exit_code=0, stdout_tail=claude(True, "API Error: Overloaded"))
    assert (v.outcome, v.failure_type, v.tokens, v.cost_usd) == ("failed", "transient", 15, 0.5)
    assert v.message == "agent reported an error: API Error: Overloaded"


def test_claude_result_text_beats_stderr() -> None:
    """With a result, its text is classified, not stderr."""
    v = judge(
        exit_code=0,
        stdout_tail=claude(True, "NameError: x is not defined"),
        stderr_tail=b"ConnectionError",
    )
    assert v.failure_type == "permanent"


def test_claude_result_with_nonzero_exit_fails() -> None:
    """A clean result with a non-zero exit code still fails; tokens and cost kept."""
    v = judge(exit_code=1, stdout_tail=claude(False, "rate limit reached"))
    assert (v.outcome, v.failure_type, v.tokens, v.cost_usd) == ("failed", "transient", 15, 0.5)
    assert v.message is not None and v.message.startswith("exit code 1: ")


def test_claude_usage_sums_all_token_kinds() -> None:
    """Input, output and both cache token counts are summed; junk values count as 0."""
    usage = {
        "input_tokens": 1,
        "output_tokens": 2,
        "cache_creation_input_tokens": 4,
        "cache_read_input_tokens": 8,
        "server_tool_use": {"web_search_requests": 100},
    }
    assert judge(exit_code=0, stdout_tail=claude(False, usage=usage)).tokens == 15
    junk = {"input_tokens": "9", "output_tokens": True, "cache_read_input_tokens": -5}
    assert judge(exit_code=0, stdout_tail=claude(False, usage=junk)).tokens == 0


def test_claude_result_without_usage_falls_back_to_output_size() -> None:
    """No usage in the result: tokens are output_bytes // 4; no cost is None."""
    line = result_line(result="ok") + b"\n"
    v = judge(exit_code=0, stdout_tail=line, output_bytes=41)
    assert (v.tokens, v.cost_usd) == (10, None)


@pytest.mark.parametrize(
    "stdout",
    [
        pytest.param(claude(False)[:-12], id="truncated"),
        pytest.param(b"plain text output\n", id="no-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"type": "assistant", "is_error": true}\n', id="not-a-result"),
        pytest.param(result_line(is_error=True) + b"\ntrailing words\n", id="not-last"),
        pytest.param(b'["type", "result"]\n', id="array"),
        pytest.param(b"{" * 5000 + b"\n", id="deep"),
    ],
)
def test_malformed_or_missing_result(stdout: bytes) -> None:
    """No usable result: in auto the exit code decides; in claude-json it is a failure."""
    assert judge(exit_code=0, stdout_tail=stdout).outcome == "completed"
    assert judge(exit_code=1, stdout_tail=stdout).outcome == "failed"
    v = judge("claude-json", exit_code=0, stdout_tail=stdout)
    assert (v.outcome, v.failure_type) == ("failed", "permanent")
    assert v.message is not None and "no Claude result on stdout (exit code 0)" in v.message


def test_claude_json_mode_accepts_a_good_result() -> None:
    """claude-json with a clean result and exit 0 completes."""
    v = judge("claude-json", exit_code=0, stdout_tail=claude(False))
    assert (v.outcome, v.tokens, v.cost_usd) == ("completed", 15, 0.5)


def test_text_mode_ignores_the_result() -> None:
    """output_format text looks only at the exit code."""
    assert judge("text", exit_code=0, stdout_tail=claude(True)).outcome == "completed"
    assert judge("text", exit_code=1, stdout_tail=claude(False)).outcome == "failed"


def test_result_line_with_crlf_and_trailing_blank_lines() -> None:
    """The last non-empty line is found across CRLF and trailing blank lines."""
    stdout = b"transcript\r\n" + result_line(is_error=True, result="bad gateway") + b"\r\n\r\n  \n"
    v = judge(exit_code=0, stdout_tail=stdout)
    assert (v.outcome, v.failure_type) == ("failed", "transient")


def test_huge_or_infinite_cost_is_dropped() -> None:
    """Regression: a cost too large for a float (or Infinity) crashed judge / poisoned state."""
    huge = b'{"type": "result", "is_error": false, "total_cost_usd": 1' + b"0" * 400 + b"}\n"
    assert judge(exit_code=0, stdout_tail=huge).cost_usd is None
    for bad in (b"Infinity", b"NaN", b"-1", b"true", b'"0.5"'):
        line = b'{"type": "result", "total_cost_usd": ' + bad + b"}"
        got = parse_claude_result(line)
        assert got is not None and got.cost_usd is None, bad


# --- permission denials -------------------------------------------------------------

FIX = "--permission-mode or --allowedTools in runner.command"
ALLOW = "runner.allow_permission_denials = true"


def denial(tool: str, n: int = 0) -> dict[str, Any]:
    """One ``permission_denials`` entry the way Claude Code writes it."""
    tool_input = {"command": "rm -rf build"} if tool == "Bash" else {"file_path": f"/w/f{n}.py"}
    return {"tool_name": tool, "tool_use_id": f"toolu_0{n}", "tool_input": tool_input}


def denied_result(*tools: str, is_error: bool = False) -> bytes:
    entries = [denial(t, i) for i, t in enumerate(tools)]
    return result_line(
        is_error=is_error, result="I could not write the file", permission_denials=entries
    )


def test_parse_reads_the_denied_tools_in_order() -> None:
    """parse_claude_result lists the tool of every permission_denials entry, in order."""
    got = parse_claude_result(denied_result("Write", "Bash", "Write"))
    assert got is not None and got.denied_tools == ("Write", "Bash", "Write")
    clean = parse_claude_result(result_line(permission_denials=[]))
    assert clean is not None and clean.denied_tools == ()


@pytest.mark.parametrize(
    ("denials", "tools"),
    [
        (None, ()),
        ({"tool_name": "Write"}, ()),  # not a list: not Claude Code's shape
        ([{"tool_use_id": "x"}], ("(unnamed tool)",)),
        (["Write"], ("(unnamed tool)",)),
        ([{"tool_name": 7}, {"tool_name": " "}], ("(unnamed tool)", "(unnamed tool)")),
    ],
)
def test_odd_permission_denials_shapes(denials: Any, tools: tuple[str, ...]) -> None:
    """A non-list is no denial; an entry without a usable tool_name still counts as one."""
    got = parse_claude_result(result_line(permission_denials=denials))
    assert got is not None and got.denied_tools == tools


@pytest.mark.parametrize("fmt", ["auto", "claude-json"])
def test_denials_with_exit_zero_are_a_permanent_failure(fmt: OutputFormat) -> None:
    """Exit 0 and is_error false, but tools were denied: failed, permanent, tools and fix named."""
    v = judge(
        fmt, exit_code=0, stdout_tail=b"transcript\n" + denied_result("Write", "Bash", "Write")
    )
    assert (v.outcome, v.failure_type) == ("failed", "permanent")
    assert v.message is not None
    assert v.message.startswith("permission denied for Write, Bash (")
    assert FIX in v.message and ALLOW in v.message
    assert v.message.endswith(": I could not write the file")


@pytest.mark.parametrize(
    ("code", "is_error"), [(75, False), (1, True), (0, True)], ids=["exit-75", "error", "is-error"]
)
def test_denials_beat_exit_code_and_error_text(code: int, is_error: bool) -> None:
    """Denials make the failure permanent even with a transient exit code or is_error."""
    stdout = result_line(
        is_error=is_error, result="ConnectionError: reset", permission_denials=[denial("Edit")]
    )
    v = judge(exit_code=code, stdout_tail=stdout)
    assert (v.outcome, v.failure_type) == ("failed", "permanent")
    assert v.message is not None and "permission denied for Edit" in v.message


def test_allow_permission_denials_lets_the_exit_code_decide() -> None:
    """Built with allow_permission_denials=True, denials are ignored: exit 0 completes."""
    allowing = Classifier.build(allow_permission_denials=True)
    v = judge(classifier=allowing, exit_code=0, stdout_tail=denied_result("Write"))
    assert (v.outcome, v.failure_type, v.message) == ("completed", None, None)
    v = judge(classifier=allowing, exit_code=0, stdout_tail=denied_result("Write", is_error=True))
    assert v.outcome == "failed" and v.message is not None and "permission" not in v.message


def test_text_mode_ignores_denials() -> None:
    """output_format text reads no result, so denials are not looked at either."""
    assert judge("text", exit_code=0, stdout_tail=denied_result("Write")).outcome == "completed"


def test_many_denied_tools_are_summarised_within_the_cap() -> None:
    """Thirty distinct denied tools: ten named, the rest counted, the fix still in the message."""
    tools = [f"mcp__server__tool_{i:02d}_" + "x" * 60 for i in range(30)]
    v = judge(exit_code=0, stdout_tail=denied_result(*tools))
    assert v.message is not None and len(v.message) <= 1000
    assert "and 20 more" in v.message and FIX in v.message and ALLOW in v.message


def test_denied_tool_names_are_sanitised() -> None:
    """A tool name with escapes or newlines cannot forge a log line."""
    v = judge(exit_code=0, stdout_tail=denied_result("Wr\x1b[31mite\nFAKE LOG LINE"))
    assert v.message is not None and not CONTROL.search(v.message)
    assert "permission denied for Write FAKE LOG LINE" in v.message


# --- stdout is a transcript ------------------------------------------------------


def test_transcript_mentioning_typeerror_does_not_fail_a_success() -> None:
    """Exit 0 with 'TypeError' all over stdout is still completed."""
    v = judge(exit_code=0, stdout_tail=b"Traceback\nTypeError: fixed it\nall tests pass\n")
    assert (v.outcome, v.failure_type) == ("completed", None)


def test_transcript_does_not_change_the_class() -> None:
    """With no result, stderr decides the class; stdout errors are ignored either way."""
    a = judge(exit_code=1, stdout_tail=b"TypeError\n", stderr_tail=b"ConnectionError")
    assert a.failure_type == "transient"
    b = judge(exit_code=1, stdout_tail=b"ConnectionError: retrying\n", stderr_tail=b"oops")
    assert b.failure_type == "permanent"
    c = judge(exit_code=1, stdout_tail=b"TypeError\n", stderr_tail=b"")
    assert (c.failure_type, c.message) == ("permanent", "exit code 1")


def test_claude_success_with_transcript_errors_completes() -> None:
    """A clean result wins over a transcript full of errors."""
    assert judge(exit_code=0, stdout_tail=claude(False, "Done")).outcome == "completed"


# --- the message ----------------------------------------------------------------


def test_failure_message_is_sanitised() -> None:
    """Escapes, newlines and secrets in stderr never reach the verdict's message."""
    stderr = b"\x1b[31mConnectionError\x1b[0m\nAuthorization: Bearer abc.def-123\x07"
    v = judge(exit_code=1, stderr_tail=stderr)
    assert v.message == "exit code 1: ConnectionError Authorization: Bearer [REDACTED]"


def test_invalid_utf8_on_stderr_is_tolerated() -> None:
    """Undecodable stderr bytes are replaced, never raised."""
    v = judge(exit_code=1, stderr_tail=b"\xff\xfeConnectionError")
    assert v.failure_type == "transient"


def test_long_stderr_message_is_capped() -> None:
    """Regression (was 1014): the message is 1000 characters, the truncation marker included."""
    v = judge(exit_code=1, stderr_tail=b"x" * 70_000)
    assert v.message is not None and v.message.endswith(TRUNCATED)
    assert len(v.message) == 1000


# --- retry hints ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rate limited; retry after 30 seconds", 30.0),
        ("Retry-After: 30", 30.0),
        ('{"retry_after": 12}', 12.0),
        ("retry after 45", 45.0),
        ("retry after 30s", 30.0),
        ("retry after 2.5 sec", 2.5),
        ("please try again in 2 minutes", 120.0),
        ("retry in 1 hour", 3600.0),
        ("retry after 500ms", 0.5),
        ("limit resets at 2026-11-24T06:00:00Z", 3600.0),
        ("anthropic-ratelimit-tokens-reset: 2026-11-24T05:00:30Z", 30.0),
        ('{"reset_at": "2026-11-24 05:00:30+00:00"}', 30.0),
        ("reset at 2026-11-24T04:00:00Z (already past)", 0.0),
        ("Claude AI usage limit reached|1795500000", 3600.0),
        ("rate limit resets: 1795496460", 60.0),
        ("nothing here", None),
        ("resets at 2026-13-45T06:00:00Z", None),
    ],
)
def test_retry_hints_with_injected_now(text: str, expected: float | None) -> None:
    """A retry-after, a try-again-in or a reset time gives the wait; now is injected."""
    assert retry_hint(text.lower(), NOW) == expected


def test_hint_text_of_a_verdict_feeds_retry_hint() -> None:
    """The verdict carries the lowercased classified text, from which the hint is read."""
    v = judge(exit_code=0, stdout_tail=claude(True, "Rate limit. Retry-After: 30"))
    assert retry_hint(v.hint_text, NOW) == 30.0
    w = judge(exit_code=1, stderr_tail=b"429 Too Many Requests; retry after 2 minutes")
    assert retry_hint(w.hint_text, NOW) == 120.0


def test_reset_hint_moves_with_now() -> None:
    """The same reset time gives a shorter wait later, and 0 once passed."""
    text = "usage limit reached|1795500000"
    assert [retry_hint(text, NOW + d) for d in (0, 3000, 3600, 9999)] == [3600.0, 600.0, 0, 0]


# --- the sanitiser ----------------------------------------------------------------

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def test_sanitize_examples() -> None:
    """Escapes out, CR/LF/tab to spaces, other controls out, long text cut with the marker."""
    assert sanitize("\x1b[31mred\x1b[0m\r\nnext\x07") == "red  next"
    assert sanitize("a\tb") == "a b"
    assert sanitize("\x1b]0;title\x07visible") == "visible"
    assert sanitize("\x9b31mc1 csi") == "c1 csi"
    assert sanitize("x" * 1001) == "x" * (1000 - len(TRUNCATED)) + TRUNCATED
    assert sanitize("x" * 1000) == "x" * 1000
    assert sanitize("x" * 400, 300) == "x" * (300 - len(TRUNCATED)) + TRUNCATED
    assert sanitize("x" * 20, 5) == "xxxxx"  # no room for the marker: cut bare


@pytest.mark.parametrize(
    ("secret", "kept"),
    [
        ("ghp_abcdefghij0123456789", ""),
        ("gho_ABCDEFGHIJ0123456789", ""),
        ("ghs_abcdefghij0123456789", ""),
        ("github_pat_11ABCDEFG0_abcdefghijklmnop", ""),
        ("sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4", ""),
        ("sk-proj-abcdefghijklmnopqrstuvwx", ""),
        ("AKIAIOSFODNN7EXAMPLE", ""),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc", "Bearer "),
        ("password=hunter2hunter2", "password="),
        ("PASSWORD: hunter2hunter2", "PASSWORD: "),
    ],
)
def test_sanitize_redacts_each_secret_shape(secret: str, kept: str) -> None:
    """Each secret shape of SPEC section 6 becomes [REDACTED]."""
    assert sanitize(f"failed: {secret} end") == f"failed: {kept}[REDACTED] end"


@pytest.mark.parametrize(
    "text",
    [
        "disk-usage-monitoring-tool failed",
        "risk-assessment-and-mitigation-plan",
        "see /var/lib/task-management-features/log",
        "the thighs_and_legs report",
        "HTTP 503 from api.example.com",
        "Ünïcödé text, “quotes” and emoji 🚀",
    ],
)
def test_sanitize_leaves_ordinary_text_alone(text: str) -> None:
    """Regression: words containing 'sk-' (disk-, risk-, task-) were redacted as API keys."""
    assert sanitize(text) == text


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=3000))
def test_no_control_character_survives_and_the_cap_holds(text: str) -> None:
    """Whatever the input, no C0, DEL or C1 character survives and it is 1000 characters at most."""
    out = sanitize(text)
    assert not CONTROL.search(out)
    assert len(out) <= 1000


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=1500), st.integers(0, 1200))
def test_any_limit_is_a_hard_cap(text: str, limit: int) -> None:
    """sanitize(text, limit) is never longer than limit, however short the limit."""
    assert len(sanitize(text, limit)) <= limit


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["\x1b", "[", "]", "3", "1", "m", "\x07", "\x9b", "\\", "a", "P"])))
def test_escape_soup_leaves_no_control_character(parts: list[str]) -> None:
    """Broken and nested escape sequences still leave no control character."""
    assert not CONTROL.search(sanitize("".join(parts)))


ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
BODY = st.text(alphabet=ALNUM, min_size=20, max_size=60)
SECRETS = st.one_of(
    BODY.map(lambda s: ("ghp_", s)),
    BODY.map(lambda s: ("gho_", s)),
    BODY.map(lambda s: ("ghs_", s)),
    st.text(alphabet=ALNUM + "_", min_size=20, max_size=60).map(lambda s: ("github_pat_", s)),
    st.text(alphabet=ALNUM + "_-", min_size=20, max_size=60).map(lambda s: ("sk-ant-", s)),
    st.text(alphabet=ALNUM + "_-", min_size=20, max_size=60).map(lambda s: ("sk-", s)),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=16).map(
        lambda s: ("AKIA", s)
    ),
    st.text(alphabet=ALNUM + "-._~+/", min_size=20, max_size=60).map(lambda s: ("Bearer ", s)),
    st.text(alphabet=ALNUM + "!@#$%^&*()", min_size=20, max_size=60).map(
        lambda s: ("password=", s)
    ),
)
FILLER = st.text(alphabet=" .,:()[]-\n\t\r\x00\x1b\x9b\x9d\x07", max_size=40)


@settings(max_examples=200, deadline=None)
@given(FILLER, SECRETS, FILLER, st.integers(0, 1500))
def test_every_generated_secret_is_redacted(
    before: str, secret: tuple[str, str], after: str, padding: int
) -> None:
    """Every secret of the listed shapes is redacted: its body never appears in the output."""
    prefix, body = secret
    out = sanitize("x" * padding + " " + before + prefix + body + after)
    assert body not in out


PLAIN = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_categories=["Cc"])
    | st.sampled_from(list("-_=: ")),
    max_size=1000,
)
_SECRET_LIKE = re.compile(
    r"(?<![a-z0-9])(sk-|gh[pousr]_|github_pat_|akia|asia|xox)"
    r"|bearer|password|passwd|secret|token|api.?key",
)


@settings(max_examples=200, deadline=None)
@given(PLAIN)
def test_plain_text_comes_out_unchanged(text: str) -> None:
    """Printable text up to 1000 characters with no escape and no secret is not changed."""
    assume(not _SECRET_LIKE.search(text.lower()))
    assert sanitize(text) == text


@settings(max_examples=200, deadline=None)
@given(PLAIN, st.text(alphabet="abc xyz", min_size=1001, max_size=3000))
def test_plain_text_over_the_limit_is_its_start_and_the_marker(head: str, tail: str) -> None:
    """Plain text over 1000 characters becomes its first 986 characters and the marker."""
    text = head + tail
    assume(not _SECRET_LIKE.search(text.lower()))
    assert sanitize(text) == text[: 1000 - len(TRUNCATED)] + TRUNCATED


@pytest.mark.parametrize("lead", ["\x1b", "\x1b ", "\x1b[", "\x9b", "\x1b(", "\x1b]0;\x07\x1b"])
def test_escape_before_a_secret_cannot_unmask_it(lead: str) -> None:
    """Regression: an escape ate a token's first character ('ghp_' -> 'hp_'), so it leaked."""
    body = "0123456789abcdefghij"
    for prefix in ("ghp_", "sk-ant-", "sk-abcd", "AKIA"):
        secret = prefix + (body.upper()[:16] if prefix == "AKIA" else body)
        out = sanitize(f"error: {lead}{secret} end")
        # The escape may still eat the marker's '[': the secret is gone either way.
        assert secret[4:] not in out and "EDACTED]" in out, (lead, prefix, out)


def test_secret_split_by_escapes_is_still_redacted() -> None:
    """A secret with escape sequences or control characters inside it is redacted too."""
    assert sanitize("ghp_0123\x1b[0m456789abcdef") == "[REDACTED]"
    assert sanitize("\x1b[33mghp_0123456789abcdef\x1b[0m") == "[REDACTED]"
    assert sanitize("sk-ant-\x00abcdefghijkl") == "[REDACTED]"


def test_a_timeout_names_the_limit() -> None:
    """A timed-out attempt's message says which limit it hit, and where that is set."""
    c = Classifier.build(timeout_s=7200)
    v = c.judge(RawResult(exit_code=None, timed_out=True), "auto")
    assert (v.outcome, v.message) == ("timed_out", "timed out after 7200 s (runner.timeout)")
