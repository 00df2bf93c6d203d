"""What a finished attempt means, and making runner text safe to repeat. Pure.

* ``sanitize``: the one gate that runner-derived text passes through before it
  reaches the daemon's log, a state file, the audit log or a control reply
  (CWE-117): escape sequences and control characters out, CR/LF to spaces,
  secrets redacted, cut so that the whole message, ``...[truncated]`` marker
  included, is at most 1000 characters.
* ``parse_claude_result``: Claude Code's headless ``{"type": "result", ...}``,
  with the tools it was denied (``permission_denials``).
* ``Classifier.judge``: outcome, failure type and message of an attempt
  (SPEC section 5 for the outcome, section 6 for transient vs permanent).
* ``retry_hint``: a "retry after" wait found in the classified text.

No IO, no clocks: ``now`` is passed in.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from batchd.model import FailureType, Outcome

MAX_MESSAGE_CHARS = 1000
TRUNCATED = "...[truncated]"
REDACTED = "[REDACTED]"

# ESC sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other
# two-byte escapes, and the 8-bit CSI/OSC introducers.
_ANSI_RE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b\]|\x9d)[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[PX^_][^\x1b\x9c]*(?:\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]?"
)
_WHITESPACE_CTRL_RE = re.compile(r"[\r\n\t]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A token prefix counts only at the start of a word: "disk-usage-monitoring" is not "sk-...".
_START = r"(?<![A-Za-z0-9])"
_SECRET_RES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(_START + r"github_pat_[A-Za-z0-9_]{10,}"), REDACTED),
    (re.compile(_START + r"gh[pousr]_[A-Za-z0-9]{10,}"), REDACTED),
    (re.compile(_START + r"sk-ant-[A-Za-z0-9_\-]{8,}"), REDACTED),
    (re.compile(_START + r"sk-[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(_START + r"(?:AKIA|ASIA)[0-9A-Z]{16}"), REDACTED),
    (re.compile(_START + r"xox[abprs]-[A-Za-z0-9\-]{10,}"), REDACTED),
    (re.compile(r"(?i)(bearer)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + REDACTED),
    (
        re.compile(r"(?i)((?:password|passwd|api[_-]?key|secret|token)\s*[=:]\s*)[^\s,;'\"]+"),
        r"\1" + REDACTED,
    ),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_RES:
        text = pattern.sub(replacement, text)
    return text


def sanitize(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Make runner-derived text safe for logs, state, audit and replies: at most ``limit``
    characters, the ``...[truncated]`` marker of a cut text included."""
    if not text.isprintable():
        # Redact before stripping escapes too: an escape sequence swallows the character
        # after it, which could be the first of a secret and leave the rest unrecognised.
        text = redact(text)
        text = _ANSI_RE.sub("", text)
        text = _WHITESPACE_CTRL_RE.sub(" ", text)
        text = _CONTROL_RE.sub("", text)
    text = redact(text)  # a printable text (the usual one) has nothing else to strip
    if len(text) > limit:
        marker = TRUNCATED if limit > len(TRUNCATED) else ""
        text = text[: limit - len(marker)] + marker
    return text


# --- Claude Code's headless result -----------------------------------------


@dataclass(frozen=True)
class ClaudeResult:
    is_error: bool
    text: str
    tokens: int | None
    cost_usd: float | None
    # ``tool_name`` of each ``permission_denials`` entry, in order: headless Claude Code
    # cannot ask a person, so it records what it was refused and still exits 0.
    denied_tools: tuple[str, ...] = ()


def last_nonempty_line(data: bytes) -> bytes:
    for line in reversed(data.splitlines()):
        if line.strip():
            return line.strip()
    return b""


def _as_int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


def parse_claude_result(stdout_tail: bytes) -> ClaudeResult | None:
    """The result object on the last non-empty line of stdout, or None."""
    line = last_nonempty_line(stdout_tail)
    if not line.startswith(b"{"):
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "result":
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
    return ClaudeResult(
        is_error=obj.get("is_error") is True,
        text=text,
        tokens=tokens,
        cost_usd=_as_cost(obj.get("total_cost_usd")),
        denied_tools=_denied_tools(obj.get("permission_denials")),
    )


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


# --- classification ---------------------------------------------------------

SEED_TRANSIENT = (
    r"connectionerror",
    r"timeouterror",
    r"ratelimiterror",
    r"networkerror",
    r"httperror.*50[234]",
    r"httperror.*429",
    r"temporaryfailure",
    r"service.*unavailable",
    r"bad.*gateway",
    r"gateway.*timeout",
    r"too.*many.*requests",
    r"connection.*refused",
    r"connection.*reset",
    r"operation.*timed.*out",
    r"timed.*out",
    r"network.*unreachable",
    r"overloaded",
    r"rate[ _-]?limit",
)
SEED_PERMANENT = (
    r"syntaxerror",
    r"importerror",
    r"typeerror",
    r"nameerror",
    r"attributeerror",
    r"valueerror",
    r"indentationerror",
    r"keyerror",
    r"indexerror",
    r"assertionerror",
    r"modulenotfounderror",
    r"filenotfounderror",
    r"permissionerror",
    r"zerodivisionerror",
    r"notimplementederror",
    r"recursionerror",
)

OutputFormat = Literal["auto", "text", "claude-json", "codex-jsonl"]

# SPEC section 12: the end states of a cluster job that decide the outcome whatever the
# exit status says. A CANCELLED that batchd asked for never gets here: that run is
# ``interrupted`` or ``timed_out`` already.
CLUSTER_END_STATES: dict[str, tuple[Outcome, FailureType, str]] = {
    "TIMEOUT": ("timed_out", "transient", "the cluster's time limit ended the job (TIMEOUT)"),
    "NODE_FAIL": ("failed", "transient", "the job's node failed (NODE_FAIL)"),
    "PREEMPTED": ("failed", "transient", "the job was preempted (PREEMPTED)"),
    "BOOT_FAIL": ("failed", "transient", "the job's node failed to boot (BOOT_FAIL)"),
    "CANCELLED": ("failed", "transient", "the job was cancelled outside batchd (CANCELLED)"),
    "OUT_OF_MEMORY": ("failed", "permanent", "the job ran out of memory (OUT_OF_MEMORY)"),
}


@dataclass(frozen=True)
class RawResult:
    """What the runner observed of one attempt, before any judgement."""

    exit_code: int | None  # None when ended by a signal
    signal: int | None = None  # the signal that ended it, when not sent by batchd
    timed_out: bool = False
    stalled: bool = False  # stopped after runner.stall_timeout without output
    interrupted: bool = False  # stopped by batchd (shutdown, pause --now, cancel)
    stdout_tail: bytes = b""
    stderr_tail: bytes = b""
    output_bytes: int = 0
    log_error: str | None = None  # the attempt log is incomplete, and why
    cluster_state: str | None = None  # a cluster job's end state (Slurm: COMPLETED, TIMEOUT, ...)


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    failure_type: FailureType | None = None
    message: str | None = None  # sanitised
    tokens: int | None = None
    cost_usd: float | None = None
    hint_text: str = field(default="", repr=False)  # lowercased text that was classified


@dataclass(frozen=True)
class Classifier:
    transient: tuple[re.Pattern[str], ...]
    permanent: tuple[re.Pattern[str], ...]
    transient_exit_codes: frozenset[int]
    allow_permission_denials: bool = False
    timeout_s: float = 0.0  # runner.timeout, named in a timed-out attempt's message

    @classmethod
    def build(
        cls,
        transient_patterns: Iterable[str] = (),
        permanent_patterns: Iterable[str] = (),
        transient_exit_codes: Iterable[int] = (75,),
        *,
        allow_permission_denials: bool = False,
        timeout_s: float = 0.0,
    ) -> Classifier:
        return cls(
            transient=tuple(re.compile(p) for p in (*SEED_TRANSIENT, *transient_patterns)),
            permanent=tuple(re.compile(p) for p in (*SEED_PERMANENT, *permanent_patterns)),
            transient_exit_codes=frozenset(transient_exit_codes),
            allow_permission_denials=allow_permission_denials,
            timeout_s=timeout_s,
        )

    def failure_type(self, text: str) -> FailureType | None:
        """Step 2 of SPEC section 6: transient patterns first, then permanent."""
        if any(p.search(text) for p in self.transient):
            return "transient"
        if any(p.search(text) for p in self.permanent):
            return "permanent"
        return None

    def judge(self, raw: RawResult, output_format: OutputFormat) -> Verdict:
        """Decide outcome, failure type and message of a finished attempt."""
        claude = None if output_format == "text" else parse_claude_result(raw.stdout_tail)
        tokens = claude.tokens if claude else None
        cost = claude.cost_usd if claude else None
        if tokens is None:
            tokens = raw.output_bytes // 4
        stderr = raw.stderr_tail.decode("utf-8", "replace")
        text = claude.text if claude is not None else stderr
        lowered = text.lower()

        def fail(ftype: FailureType, why: str, outcome: Outcome = "failed") -> Verdict:
            detail = sanitize(text.strip()) if text.strip() else ""
            message = f"{why}: {detail}" if detail else why
            return Verdict(outcome, ftype, sanitize(message), tokens, cost, lowered)

        if raw.interrupted:
            return Verdict("interrupted", None, "stopped by batchd", tokens, cost, lowered)
        if raw.timed_out:
            limit = f" after {self.timeout_s:g} s (runner.timeout)" if self.timeout_s else ""
            return fail("transient", f"timed out{limit}", "timed_out")
        if raw.cluster_state in CLUSTER_END_STATES:
            outcome, ftype, why = CLUSTER_END_STATES[raw.cluster_state]
            return fail(ftype, why, outcome)
        if raw.signal is not None:
            return fail("transient", f"killed by signal {raw.signal}")
        code = raw.exit_code
        if claude is not None and claude.denied_tools and not self.allow_permission_denials:
            # Whatever the exit code and is_error say: the agent was blocked, retrying
            # with the same permissions cannot help.
            return fail("permanent", denial_message(claude.denied_tools))
        if claude is not None:
            failed = claude.is_error or code != 0
            why = "agent reported an error" if claude.is_error else f"exit code {code}"
        elif output_format == "claude-json":
            failed = True
            why = f"no Claude result on stdout (exit code {code})"
        else:
            failed = code != 0
            why = f"exit code {code}"
        if not failed:
            return Verdict("completed", None, None, tokens, cost, lowered)
        if code in self.transient_exit_codes:
            return fail("transient", why)
        return fail(self.failure_type(lowered) or "permanent", why)


def hook_failed(name: str, why: str) -> Verdict:
    """A ``before_feature`` hook that failed fails the attempt as transient (SPEC 5)."""
    return Verdict("failed", "transient", sanitize(f"hook {name} failed: {why}"))


# --- retry hints -------------------------------------------------------------

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUM_UNIT = r"(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?)?\b"
_HINT_RES = (
    re.compile(r"retry[-_ ]after[\"']?\s*[:=]?\s*" + _NUM_UNIT),
    re.compile(r"(?:try again|retry) in\s*" + _NUM_UNIT),
)
_RESET_ISO_RE = re.compile(
    r"reset(?:s|_at)?\s*(?:at)?[\"']?\s*[:=]?\s*[\"']?"
    r"(\d{4}-\d\d-\d\d[t ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:z|[+-]\d\d:?\d\d)?)"
)
_RESET_EPOCH_RE = re.compile(r"(?:limit reached\||reset(?:s|_at)?\s*[:=]?\s*)(\d{10})\b")


def _unit_seconds(unit: str | None) -> float:
    if not unit:
        return 1.0
    if unit.startswith("ms") or unit.startswith("milli"):
        return _UNIT_S["ms"]
    return _UNIT_S[unit[0]]


def retry_hint(text: str, now: float) -> float | None:
    """Seconds to wait that the failure text asks for, or None. ``text`` is lowercased."""
    for pattern in _HINT_RES:
        m = pattern.search(text)
        if m:
            return float(m.group(1)) * _unit_seconds(m.group(2))
    m = _RESET_ISO_RE.search(text)
    if m:
        stamp = m.group(1).upper().replace(" ", "T").replace("Z", "+00:00")
        try:
            when = datetime.fromisoformat(stamp)
        except ValueError:
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - now)
    m = _RESET_EPOCH_RE.search(text)
    if m:
        return max(0.0, float(m.group(1)) - now)
    return None
