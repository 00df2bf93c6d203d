"""What the agents report: Claude Code's headless result and codex's JSON-lines stream. Pure.

* ``parse_claude_result``: the ``{"type": "result", ...}`` object on the last
  non-empty line of stdout (``claude -p --output-format json`` or
  ``stream-json``): its text, ``subtype``, ``api_error_status``, usage, cost,
  ``session_id`` and the tools it was denied.
* ``CodexStream``: the events of ``codex exec --json``, fed as the bytes
  arrive (any chunking, lines split anywhere). ``facts()`` is what a judgement
  needs, exact however long the run was: the thread id, the ``turn.completed``
  count and token sums, the last ``turn.failed``, the last ``error`` and
  whether a ``turn.completed`` came after it. The local engine feeds it from
  the stdout reader (a long codex run prints far more than the 256 KiB tail
  kept for classification); ``codex_facts`` reads a tail or a log the same way.

No IO and no judgement: what a result means is ``classify``'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# --- Claude Code's headless result -----------------------------------------------


@dataclass(frozen=True)
class ClaudeResult:
    is_error: bool
    text: str
    tokens: int | None
    cost_usd: float | None
    # ``tool_name`` of each ``permission_denials`` entry, in order: headless Claude Code
    # cannot ask a person, so it records what it was refused and still exits 0.
    denied_tools: tuple[str, ...] = ()
    subtype: str | None = None  # "success", "error_max_turns", ...
    api_error_status: int | None = None  # the HTTP status of the API error that ended it
    session_id: str | None = None  # unchecked: ``classify`` keeps it only if it looks like one


def last_nonempty_line(data: bytes) -> bytes:
    for line in reversed(data.splitlines()):
        if line.strip():
            return line.strip()
    return b""


def _as_int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def parse_claude_result(stdout_tail: bytes) -> ClaudeResult | None:
    """The result object on the last non-empty line of stdout, or None."""
    obj = _json_object(last_nonempty_line(stdout_tail))
    if obj is None or obj.get("type") != "result":
        return None
    usage = obj.get("usage")
    tokens: int | None = None
    if isinstance(usage, dict):
        tokens = sum(
            _as_int(usage.get(k))
            for k in (
                "input_tokens",
                "output_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            )
        )
    text = obj.get("result")
    if not isinstance(text, str):
        text = str(obj.get("subtype") or "")
    status = obj.get("api_error_status")
    return ClaudeResult(
        is_error=obj.get("is_error") is True,
        text=text,
        tokens=tokens,
        cost_usd=_as_cost(obj.get("total_cost_usd")),
        denied_tools=_denied_tools(obj.get("permission_denials")),
        subtype=_str(obj.get("subtype")),
        api_error_status=status if type(status) is int else None,
        session_id=_str(obj.get("session_id")),
    )


def _json_object(line: bytes) -> dict[str, Any] | None:
    if not line.startswith(b"{"):
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _denied_tools(denials: Any) -> tuple[str, ...]:
    """The tool of each ``permission_denials`` entry; a malformed entry still counts."""
    if not isinstance(denials, list):
        return ()
    names = []
    for entry in denials:
        name = entry.get("tool_name") if isinstance(entry, dict) else None
        names.append(name if isinstance(name, str) and name.strip() else "(unnamed tool)")
    return tuple(names)


MAX_DENIED_NAMED = 10


def denial_message(tools: Iterable[str]) -> str:
    """What was denied (each tool once, in order) and how to allow it."""
    unique = list(dict.fromkeys(t.strip()[:60] for t in tools))
    named = ", ".join(unique[:MAX_DENIED_NAMED])
    if len(unique) > MAX_DENIED_NAMED:
        named += f" and {len(unique) - MAX_DENIED_NAMED} more"
    return (
        f"permission denied for {named} (headless mode cannot ask for permission, so the "
        "work was not done); allow these tools with --permission-mode or --allowedTools in "
        "runner.command, or set runner.allow_permission_denials = true"
    )


def _as_cost(v: Any) -> float | None:
    """A finite, non-negative cost, else None (a huge int or Infinity must not reach state)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        cost = float(v)
    except OverflowError:
        return None
    return cost if math.isfinite(cost) and cost >= 0 else None


# --- codex exec --json ----------------------------------------------------------------

CODEX_TYPES = frozenset(
    {"thread.started", "turn.started", "turn.completed", "turn.failed", "error"}
)
MAX_LINE = 1 << 20  # a longer line (a huge command output in an item) is skipped
MAX_TEXT = 64 * 1024  # of an error message, as for the stderr tail


@dataclass(frozen=True)
class CodexFacts:
    seen: bool = False  # at least one line was a codex event: this is a codex stream
    thread_id: str | None = None
    turns_completed: int = 0
    turn_failed: str | None = None  # ``error.message`` of the last ``turn.failed``
    last_error: str | None = None  # ``message`` of the last top-level ``error`` event
    error_pending: bool = False  # that error came after the last ``turn.completed``
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int | None:
        """input + output tokens over every ``turn.completed.usage``; None without one."""
        return self.input_tokens + self.output_tokens if self.turns_completed else None


class CodexStream:
    """An incremental reader of codex's events: ``feed`` bytes as they come, then ``facts``."""

    def __init__(self) -> None:
        self._partial = b""
        self._overlong = False  # inside a line longer than MAX_LINE: skip to its end
        self._facts: dict[str, Any] = {}
        self._seen = False
        self._counts = [0, 0, 0]  # turns completed, input tokens, output tokens

    def feed(self, data: bytes) -> None:
        lines = data.split(b"\n")
        if self._overlong:
            if len(lines) == 1:
                return
            lines[0], self._overlong = b"", False
        elif self._partial:
            lines[0] = self._partial + lines[0]
        tail = lines.pop()
        if len(tail) > MAX_LINE:
            tail, self._overlong = b"", True
        self._partial = tail
        for line in lines:
            if b'"type"' in line:
                self._line(line)

    def facts(self) -> CodexFacts:
        """What the stream said so far (a last line without its newline included)."""
        if self._partial and not self._overlong:
            partial, self._partial = self._partial, b""
            if b'"type"' in partial:
                self._line(partial)
        done, tokens_in, tokens_out = self._counts
        return CodexFacts(
            seen=self._seen,
            turns_completed=done,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            **self._facts,
        )

    def _line(self, line: bytes) -> None:
        event = _json_object(line.strip())
        kind = event.get("type") if event is not None else None
        if event is None or not isinstance(kind, str):
            return
        if kind in CODEX_TYPES or kind.startswith("item."):
            self._seen = True
        if kind == "thread.started" and _str(event.get("thread_id")):
            self._facts["thread_id"] = event["thread_id"]
        elif kind == "turn.completed":
            usage = event.get("usage")
            usage = usage if isinstance(usage, dict) else {}
            self._counts[0] += 1
            self._counts[1] += _as_int(usage.get("input_tokens"))
            self._counts[2] += _as_int(usage.get("output_tokens"))
            self._facts["error_pending"] = False
        elif kind == "turn.failed":
            error = event.get("error")
            message = _str(error.get("message")) if isinstance(error, dict) else None
            self._facts["turn_failed"] = (message or "turn failed")[:MAX_TEXT]
        elif kind == "error":
            message = _str(event.get("message")) or "error"
            self._facts.update(last_error=message[:MAX_TEXT], error_pending=True)


def codex_facts(data: bytes) -> CodexFacts:
    """The facts of a whole stream (or of its tail, whose first line may be cut)."""
    stream = CodexStream()
    stream.feed(data)
    return stream.facts()
