"""Reading what the agents print: Claude Code's result and codex's event stream. Pure.

The real outputs of ``tests/data/agents/`` (copied verbatim from the agents, see
its README) and small streams written the way codex writes them.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from batchd.agents import (
    MAX_LINE,
    CodexFacts,
    CodexStream,
    codex_facts,
    parse_claude_result,
)

AGENTS = Path(__file__).resolve().parent / "data" / "agents"


def events(*objs: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def completed(inp: int, out: int) -> dict[str, Any]:
    usage = {"input_tokens": inp, "cached_input_tokens": 7, "output_tokens": out}
    return {"type": "turn.completed", "usage": usage}


def test_claude_results_of_the_real_cli() -> None:
    """Claude Code 2.1.328's results: is_error, the text, subtype, status, session."""
    logged_out = parse_claude_result((AGENTS / "claude-2.1.328-not-logged-in.json").read_bytes())
    assert logged_out is not None
    assert (logged_out.is_error, logged_out.text, logged_out.subtype) == (
        True,
        "Not logged in · Please run /login",
        "success",
    )
    assert logged_out.session_id == "152f20d2-9001-4d04-afc2-787db10268c5"
    assert (logged_out.api_error_status, logged_out.tokens, logged_out.cost_usd) == (None, 0, 0)
    offline = parse_claude_result((AGENTS / "claude-2.1.328-offline-final.json").read_bytes())
    assert offline is not None and offline.text.startswith("API Error: Can't reach the API")
    # The stream of api_retry events has no result line.
    assert (
        parse_claude_result((AGENTS / "claude-2.1.328-offline-stream.jsonl").read_bytes()) is None
    )


def test_claude_result_fields_of_other_shapes() -> None:
    """An error subtype without a text names the subtype; a status is an int or nothing."""
    line = {"type": "result", "subtype": "error_max_turns", "is_error": False}
    r = parse_claude_result(json.dumps(line).encode())
    assert r is not None and (r.text, r.subtype, r.session_id) == (
        "error_max_turns",
        "error_max_turns",
        None,
    )
    for status, kept in ((529, 529), ("529", None), (True, None), (None, None)):
        line = {"type": "result", "api_error_status": status, "result": "x"}
        r = parse_claude_result(json.dumps(line).encode())
        assert r is not None and r.api_error_status == kept


def test_the_real_codex_offline_stream() -> None:
    """codex 0.169.0 offline: its thread, and error events with no turn.completed after."""
    facts = codex_facts((AGENTS / "codex-0.169.0-offline.jsonl").read_bytes())
    assert facts == CodexFacts(
        seen=True,
        thread_id="01a24526-02bc-7300-9bf7-32a40f403d47",
        last_error="Reconnecting... waiting for network (Connection failed: error sending request)",
        error_pending=True,
    )
    assert facts.tokens is None


def test_a_turn_completed_after_the_errors_settles_them_and_counts_tokens() -> None:
    """Errors followed by turn.completed are notices; tokens add up over the turns."""
    data = (AGENTS / "codex-0.169.0-offline.jsonl").read_bytes()
    data += events(completed(100, 20), {"type": "turn.started"}, completed(5, 1))
    facts = codex_facts(data)
    assert (facts.error_pending, facts.turns_completed, facts.tokens) == (False, 2, 126)
    assert facts.last_error is not None and facts.turn_failed is None


def test_turn_failed_and_its_message() -> None:
    """turn.failed keeps error.message (a missing one says so)."""
    facts = codex_facts(events({"type": "turn.failed", "error": {"message": "boom"}}))
    assert (facts.seen, facts.turn_failed) == (True, "boom")
    assert codex_facts(events({"type": "turn.failed"})).turn_failed == "turn failed"


def test_lines_that_are_not_codex_events() -> None:
    """Text, other JSON and Claude's stream are not a codex stream."""
    claude_stream = (AGENTS / "claude-2.1.328-offline-stream.jsonl").read_bytes()
    for data in (b"hello\n{not json\n[1, 2]\n", events({"type": "result"}), claude_stream):
        assert codex_facts(data) == CodexFacts()
    item = events({"type": "item.completed", "item": {"type": "agent_message", "text": "hi"}})
    assert codex_facts(item).seen


def test_a_last_line_without_its_newline_counts_once() -> None:
    """The stream's end may cut the newline; facts() twice gives the same answer."""
    stream = CodexStream()
    stream.feed(events({"type": "turn.started"}) + json.dumps(completed(3, 4)).encode())
    assert stream.facts().tokens == 7
    assert stream.facts().tokens == 7


def test_an_overlong_line_is_skipped_and_the_next_ones_read() -> None:
    """A line over MAX_LINE (a huge command output) is skipped, not kept in memory."""
    stream = CodexStream()
    huge = b'{"type": "item.completed", "text": "' + b"x" * (MAX_LINE + 10)
    for i in range(0, len(huge), 65536):
        stream.feed(huge[i : i + 65536])
    stream.feed(b'"}\n' + events({"type": "error", "message": "after"}))
    assert stream.facts().last_error == "after"


STREAM = events(
    {"type": "thread.started", "thread_id": "t-1"},
    {"type": "turn.started"},
    {"type": "error", "message": "Reconnecting... 1/5 (stream disconnected)"},
    {"type": "item.completed", "item": {"type": "agent_message", "text": "usage limit é"}},
    completed(10, 2),
    {"type": "error", "message": "Reconnecting... 2/5"},
)


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_chunking_gives_the_same_facts(cuts: list[int]) -> None:
    """Fed in pieces cut anywhere (inside a line, inside a UTF-8 character), the facts
    are those of the whole stream."""
    stream = CodexStream()
    bounds = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(bounds):
        stream.feed(STREAM[a:b])
    assert stream.facts() == codex_facts(STREAM)
    assert codex_facts(STREAM) == CodexFacts(
        seen=True,
        thread_id="t-1",
        turns_completed=1,
        last_error="Reconnecting... 2/5",
        error_pending=True,
        input_tokens=10,
        output_tokens=2,
    )
