"""Classification and sanitising (SPEC section 6), table-driven and property-based. Pure."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchd.classify import (
    SEED_PERMANENT,
    SEED_TRANSIENT,
    TRUNCATED,
    Classifier,
    RawResult,
    retry_hint,
    sanitize,
)

C = Classifier.build()


def claude(is_error: bool, text: str = "done", cost: float = 0.5) -> bytes:
    line = {
        "type": "result",
        "is_error": is_error,
        "result": text,
        "total_cost_usd": cost,
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }
    return b"transcript line\n" + json.dumps(line).encode() + b"\n"


SAMPLES_T = [
    "ConnectionError: x",
    "TimeoutError",
    "RateLimitError",
    "NetworkError",
    "HTTPError 503",
    "HTTPError: 502 bad",
    "httperror 504",
    "HTTPError 429",
    "TemporaryFailure",
    "Service Unavailable",
    "bad gateway",
    "gateway timeout",
    "Too Many Requests",
    "connection refused",
    "Connection reset",
    "operation timed out",
    "timed out",
    "network is unreachable",
    "API overloaded",
    "rate limit hit",
    "rate_limit",
    "ratelimit",
]
SAMPLES_P = [
    "SyntaxError",
    "ImportError",
    "TypeError",
    "NameError",
    "AttributeError",
    "ValueError",
    "IndentationError",
    "KeyError",
    "IndexError",
    "AssertionError",
    "ModuleNotFoundError",
    "FileNotFoundError",
    "PermissionError",
    "ZeroDivisionError",
    "NotImplementedError",
    "RecursionError",
]


def test_seed_lists_are_complete() -> None:
    """Every pattern of the seed lists is present."""
    assert len(SEED_TRANSIENT) >= 18 and len(SEED_PERMANENT) == 16


@pytest.mark.parametrize("text", SAMPLES_T)
def test_transient_texts(text: str) -> None:
    """Each seed transient pattern on stderr makes a failure transient."""
    v = C.judge(RawResult(exit_code=1, stderr_tail=text.encode()), "auto")
    assert (v.outcome, v.failure_type) == ("failed", "transient")


@pytest.mark.parametrize("text", SAMPLES_P)
def test_permanent_texts(text: str) -> None:
    """Each seed permanent pattern on stderr makes a failure permanent."""
    v = C.judge(RawResult(exit_code=1, stderr_tail=text.encode()), "auto")
    assert (v.outcome, v.failure_type) == ("failed", "permanent")


def test_transient_checked_before_permanent_and_unknown_is_permanent() -> None:
    """Transient wins when both match; anything else is permanent."""
    both = C.judge(RawResult(exit_code=1, stderr_tail=b"TypeError after ConnectionError"), "auto")
    assert both.failure_type == "transient"
    assert C.judge(RawResult(exit_code=1, stderr_tail=b"weird"), "auto").failure_type == "permanent"


def test_exit_75_timeouts_and_signals() -> None:
    """Exit 75, a timeout and a foreign signal are transient; an interruption is not a failure."""
    assert C.judge(RawResult(exit_code=75), "auto").failure_type == "transient"
    t = C.judge(RawResult(exit_code=None, timed_out=True), "auto")
    assert (t.outcome, t.failure_type) == ("timed_out", "transient")
    s = C.judge(RawResult(exit_code=None, signal=9), "auto")
    assert (s.outcome, s.failure_type) == ("failed", "transient")
    i = C.judge(RawResult(exit_code=None, interrupted=True), "auto")
    assert i.outcome == "interrupted" and i.failure_type is None
    custom = Classifier.build(transient_exit_codes=[3], transient_patterns=["quota"])
    assert custom.judge(RawResult(exit_code=3), "auto").failure_type == "transient"
    assert (
        custom.judge(RawResult(exit_code=1, stderr_tail=b"Quota exceeded"), "auto").failure_type
        == "transient"
    )


def test_claude_results() -> None:
    """is_error fails with exit 0; its text is classified; tokens and cost are kept either way."""
    ok = C.judge(RawResult(exit_code=0, stdout_tail=claude(False)), "auto")
    assert (ok.outcome, ok.tokens, ok.cost_usd) == ("completed", 15, 0.5)
    bad = C.judge(RawResult(exit_code=0, stdout_tail=claude(True, "API Error: overloaded")), "auto")
    assert (bad.outcome, bad.failure_type, bad.cost_usd) == ("failed", "transient", 0.5)
    perm = C.judge(RawResult(exit_code=0, stdout_tail=claude(True, "denied")), "claude-json")
    assert perm.failure_type == "permanent" and "agent reported an error" in (perm.message or "")
    # malformed / missing: exit code decides in auto, failure in claude-json
    cut = claude(False)[:-10]
    assert C.judge(RawResult(exit_code=0, stdout_tail=cut), "auto").outcome == "completed"
    assert C.judge(RawResult(exit_code=0, stdout_tail=cut), "claude-json").outcome == "failed"
    assert (
        C.judge(RawResult(exit_code=0, stdout_tail=b"no json"), "claude-json").outcome == "failed"
    )
    assert C.judge(RawResult(exit_code=0, stdout_tail=claude(True)), "text").outcome == "completed"


def test_transcript_on_stdout_never_changes_the_class() -> None:
    """stdout is the agent's transcript: a TypeError there changes neither success nor class."""
    ok = C.judge(RawResult(exit_code=0, stdout_tail=b"fixed a TypeError\n"), "auto")
    assert ok.outcome == "completed"
    f = C.judge(
        RawResult(exit_code=1, stdout_tail=b"TypeError\n", stderr_tail=b"ConnectionError"), "auto"
    )
    assert f.failure_type == "transient"
    g = C.judge(RawResult(exit_code=1, stdout_tail=b"ConnectionError\n", stderr_tail=b""), "auto")
    assert g.failure_type == "permanent"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rate limited; retry after 30 seconds", 30.0),
        ("retry-after: 30", 30.0),
        ("please try again in 2 minutes", 120.0),
        ("retry after 500ms", 0.5),
        ("limit resets at 2026-11-24t06:00:00z", 3600.0),
        ("claude ai usage limit reached|1795500000", 1795500000 - 1795496400.0),
        ("nothing here", None),
    ],
)
def test_retry_hints(text: str, expected: float | None) -> None:
    """Hints in the failure text give the wait; time is injected."""
    now = 1795496400.0  # 2026-11-24T05:00:00Z
    assert retry_hint(text, now) == expected


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000))
def test_sanitize_removes_every_control_and_caps(text: str) -> None:
    """No control character survives and the length cap holds."""
    out = sanitize(text)
    assert not CONTROL.search(out)
    assert len(out) <= 1000 + len(TRUNCATED)


ALNUM = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
    min_size=20,
    max_size=40,
)
SECRETS = st.one_of(
    ALNUM.map(lambda s: "ghp_" + s),
    ALNUM.map(lambda s: "gho_" + s),
    ALNUM.map(lambda s: "ghs_" + s),
    ALNUM.map(lambda s: "github_pat_" + s),
    ALNUM.map(lambda s: "sk-ant-" + s),
    ALNUM.map(lambda s: "sk-" + s),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=16, max_size=16).map(
        lambda s: "AKIA" + s
    ),
    ALNUM.map(lambda s: "Bearer " + s),
    ALNUM.map(lambda s: "password=" + s),
)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" abc.,:", max_size=30), SECRETS, st.text(alphabet=" xyz.", max_size=30))
def test_every_secret_shape_is_redacted(before: str, secret: str, after: str) -> None:
    """Every generated secret of the listed shapes is gone from the output."""
    out = sanitize(before + " " + secret + " " + after)
    body = secret.split("=", 1)[-1].split(" ", 1)[-1]
    assert body not in out and "[REDACTED]" in out


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.characters(
            min_codepoint=0x20, max_codepoint=0x2FF, blacklist_categories=("Cc",)
        ),
        max_size=900,
    )
)
def test_plain_text_comes_out_unchanged(text: str) -> None:
    """Printable text without secrets is not touched."""
    lowered = text.lower()
    if any(
        k in lowered
        for k in (
            "sk-",
            "gh",
            "akia",
            "bearer",
            "password",
            "token",
            "secret",
            "key",
            "xox",
            "passwd",
            "asia",
        )
    ):
        return
    assert sanitize(text) == text


def test_sanitize_examples() -> None:
    """Escapes out, CR/LF to spaces, long text cut with the marker."""
    assert sanitize("\x1b[31mred\x1b[0m\r\nnext\x07") == "red  next"
    assert sanitize("x" * 1200).endswith(TRUNCATED)
