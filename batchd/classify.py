"""What a finished attempt means (SPEC sections 5, 6 and 13). Pure.

* ``Classifier.judge``: outcome, failure type and message of an attempt, from
  what the runner observed (``RawResult``) and the runner profile's traits
  (``RunnerTraits``): completed, failed (transient or permanent), timed out
  (or stalled), interrupted, ``limited`` by the agent's usage limit (with the
  reset time), or trouble that is nobody's feature's fault (an agent that is
  not logged in: ``trouble = "agent_login"``, charged nothing).
* ``retry_hint``: a "retry after" wait found in the classified text.

The classified text is the Claude result's text, else codex's failure (its
``turn.failed`` or last ``error`` event), else the stderr tail: never the
transcript on stdout. The built-in patterns and tables are ``knownfailures``'s;
what the agents print is read by ``agents``; the reset times by ``resets``; the
limit and login texts are ``limits``'s; making text safe to repeat is
``sanitize``'s (re-exported here). No IO, no clocks: ``now`` and the local zone
are passed in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import TYPE_CHECKING, Any, Literal

from batchd import limits
from batchd.agents import ClaudeResult, CodexFacts, codex_facts, denial_message, parse_claude_result
from batchd.knownfailures import (
    CLAUDE_CAPS,
    CLUSTER_END_STATES,
    NETWORK_TRANSIENT,
    SEED_PERMANENT,
    SEED_TRANSIENT,
    TRANSIENT_API_STATUS,
)
from batchd.model import FailureType, Outcome
from batchd.resets import reset_at
from batchd.sanitize import MAX_MESSAGE_CHARS as MAX_MESSAGE_CHARS
from batchd.sanitize import REDACTED as REDACTED
from batchd.sanitize import TRUNCATED as TRUNCATED
from batchd.sanitize import redact as redact
from batchd.sanitize import sanitize as sanitize

if TYPE_CHECKING:
    from batchd.config import Config, RunnerConfig

OutputFormat = Literal["auto", "text", "claude-json", "codex-jsonl"]
Trouble = Literal["agent_login"]
_SESSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class JobCheck:
    """The check an engine ran itself after the agent (Slurm: inside the job, SPEC 14), as
    observed: raw, before any judgement (``verify.from_job`` words it, ``checking`` judges)."""

    exit_code: int | None  # None: it recorded no end (the job ended under it)
    timed_out: bool  # stopped at verify.timeout
    duration_s: float
    timeout: float  # verify.timeout it ran under (0 = none)
    output_tail: bytes  # the last 16 KiB of its output, as the log has them
    cut_short: str | None = None  # the job ended during the check (a cancel, a node failure)


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
    codex: CodexFacts | None = None  # read from the whole stdout as it streamed; None: the tail
    check: JobCheck | None = None  # the check the engine ran after the agent; None: none ran


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    failure_type: FailureType | None = None
    message: str | None = None  # sanitised
    tokens: int | None = None
    cost_usd: float | None = None
    hint_text: str = field(default="", repr=False)  # lowercased text that was classified
    tokens_estimated: bool = False  # ``tokens`` is output bytes / 4, not the agent's count
    session_id: str | None = None  # the agent's conversation (Claude session, codex thread)
    # ``limited``: the reset time the text names (epoch seconds, before limits.reset_margin),
    # None when it names none (wait limits.probe_interval).
    limit_until: float | None = None
    # Not the feature's fault and not charged (outcome ``interrupted``): the profile pauses.
    trouble: Trouble | None = None
    notes: tuple[str, ...] = ()  # for the daemon's log (an unknown time zone read as local)


@dataclass(frozen=True)
class RunnerTraits:
    """What judging needs of the runner profile that ran the attempt."""

    output_format: OutputFormat = "auto"
    allow_permission_denials: bool = False
    timeout_s: float = 0.0  # runner.timeout, named in a timed-out attempt's message
    stall_timeout_s: float = 0.0  # runner.stall_timeout, named in a stalled attempt's message
    program: str = ""  # runner.command[0]: which agent to explain a login for
    user: str = ""  # the user the daemon runs as, named in the login help

    @classmethod
    def of(cls, runner: RunnerConfig, user: str) -> RunnerTraits:
        return cls(
            output_format=runner.output_format,
            allow_permission_denials=runner.allow_permission_denials,
            timeout_s=float(runner.timeout),
            stall_timeout_s=float(runner.stall_timeout),
            program=runner.command[0],
            user=user,
        )


@dataclass(frozen=True)
class _Evidence:
    """What the attempt's output says, whichever agent printed it."""

    claude: ClaudeResult | None
    codex: CodexFacts | None
    text: str  # the classified text
    tokens: int | None
    estimated: bool
    cost: float | None
    session_id: str | None

    def verdict(self, outcome: Outcome, **kw: Any) -> Verdict:
        """A verdict carrying this evidence, with ``kw`` set."""
        base = Verdict(
            outcome,
            tokens=self.tokens,
            cost_usd=self.cost,
            hint_text=self.text.lower(),
            tokens_estimated=self.estimated,
            session_id=self.session_id,
        )
        return dataclasses.replace(base, **kw)

    def fail(self, ftype: FailureType, why: str, outcome: Outcome = "failed") -> Verdict:
        detail = sanitize(self.text.strip()) if self.text.strip() else ""
        message = f"{why}: {detail}" if detail and not why.endswith(detail) else why
        return self.verdict(outcome, failure_type=ftype, message=sanitize(message))


def _evidence(raw: RawResult, fmt: OutputFormat) -> _Evidence:
    claude = parse_claude_result(raw.stdout_tail) if fmt in ("auto", "claude-json") else None
    codex = None
    if claude is None and fmt in ("auto", "codex-jsonl"):
        facts = raw.codex if raw.codex is not None else codex_facts(raw.stdout_tail)
        codex = facts if facts.seen else None
    text = raw.stderr_tail.decode("utf-8", "replace")
    tokens, session, cost = None, None, None
    if claude is not None:
        text, tokens, session, cost = claude.text, claude.tokens, claude.session_id, claude.cost_usd
    elif codex is not None:
        tokens, session = codex.tokens, codex.thread_id
        if codex.turn_failed is not None:
            text = codex.turn_failed
        elif codex.last_error is not None and (codex.error_pending or raw.exit_code != 0):
            text = codex.last_error
    estimated = tokens is None
    return _Evidence(
        claude=claude,
        codex=codex,
        text=text,
        tokens=raw.output_bytes // 4 if tokens is None else tokens,
        estimated=estimated,
        cost=cost,
        session_id=session if session and _SESSION_RE.fullmatch(session) else None,
    )


def _why_failed(ev: _Evidence, code: int | None, fmt: OutputFormat) -> str | None:
    """Why the attempt failed by its own account, or None when it completed (SPEC 5, 13)."""
    if ev.claude is not None:
        if ev.claude.subtype not in (None, "success"):
            return f"agent reported {ev.claude.subtype}"
        if ev.claude.is_error:
            return "agent reported an error"
        return None if code == 0 else f"exit code {code}"
    if ev.codex is not None:
        if ev.codex.turn_failed is not None:
            return "codex turn failed" if code == 0 else f"codex turn failed (exit code {code})"
        if code != 0:
            return f"exit code {code}"
        if ev.codex.error_pending:
            return "codex reported an error and its turn did not complete"
        return None
    if fmt == "claude-json":
        return f"no Claude result on stdout (exit code {code})"
    if fmt == "codex-jsonl":
        return f"no codex events on stdout (exit code {code})"
    return None if code == 0 else f"exit code {code}"


@dataclass(frozen=True)
class Classifier:
    transient: tuple[re.Pattern[str], ...]
    permanent: tuple[re.Pattern[str], ...]
    transient_exit_codes: frozenset[int]
    usage: tuple[re.Pattern[str], ...] = ()
    login: tuple[re.Pattern[str], ...] = ()
    defaults: RunnerTraits = RunnerTraits()  # when ``judge`` is given an output format only

    @classmethod
    def build(
        cls,
        transient_patterns: Iterable[str] = (),
        permanent_patterns: Iterable[str] = (),
        transient_exit_codes: Iterable[int] = (75,),
        *,
        usage_patterns: Iterable[str] = (),
        login_patterns: Iterable[str] = (),
        allow_permission_denials: bool = False,
        timeout_s: float = 0.0,
    ) -> Classifier:
        def compiled(*groups: Iterable[str]) -> tuple[re.Pattern[str], ...]:
            return tuple(re.compile(p) for group in groups for p in group)

        return cls(
            transient=compiled(SEED_TRANSIENT, NETWORK_TRANSIENT, transient_patterns),
            permanent=compiled(SEED_PERMANENT, permanent_patterns),
            transient_exit_codes=frozenset(transient_exit_codes),
            usage=compiled(limits.USAGE_PATTERNS, usage_patterns),
            login=compiled(limits.LOGIN_PATTERNS, login_patterns),
            defaults=RunnerTraits(
                allow_permission_denials=allow_permission_denials, timeout_s=timeout_s
            ),
        )

    @classmethod
    def from_config(cls, cfg: Config) -> Classifier:
        """The patterns and exit codes of ``[classify]`` and ``[limits]``."""
        c, lim = cfg.classify, cfg.limits
        return cls.build(
            c.transient_patterns,
            c.permanent_patterns,
            c.transient_exit_codes,
            usage_patterns=lim.usage_patterns,
            login_patterns=lim.login_patterns,
            allow_permission_denials=cfg.runner.allow_permission_denials,
            timeout_s=float(cfg.runner.timeout),
        )

    def failure_type(self, text: str) -> FailureType | None:
        """Step 2 of SPEC section 6: transient patterns first, then permanent."""
        if any(p.search(text) for p in self.transient):
            return "transient"
        if any(p.search(text) for p in self.permanent):
            return "permanent"
        return None

    def judge(
        self,
        raw: RawResult,
        runner: RunnerTraits | OutputFormat,
        *,
        now: float | None = None,
        zone: tzinfo | None = None,
    ) -> Verdict:
        """Decide the outcome of a finished attempt.

        ``now`` is when the attempt ended and ``zone`` the daemon's local zone (None:
        the process's local time): a usage limit's reset time is read with them. Without
        ``now`` a limited verdict has no ``limit_until``.
        """
        traits = runner if isinstance(runner, RunnerTraits) else self._traits(runner)
        ev = _evidence(raw, traits.output_format)
        early = self._ended_early(raw, ev, traits)
        if early is not None:
            return early
        why = _why_failed(ev, raw.exit_code, traits.output_format)
        if why is None:
            return ev.verdict("completed")
        return self._failure(ev, why, raw.exit_code, traits, now, zone)

    def _traits(self, output_format: OutputFormat) -> RunnerTraits:
        return dataclasses.replace(self.defaults, output_format=output_format)

    def _ended_early(self, raw: RawResult, ev: _Evidence, traits: RunnerTraits) -> Verdict | None:
        """Stopped, timed out, stalled, ended by the cluster or a signal, or blocked."""
        if raw.interrupted:
            return ev.verdict("interrupted", message="stopped by batchd")
        if raw.stalled:
            n = f" for {traits.stall_timeout_s:g} s" if traits.stall_timeout_s else ""
            why = f"stalled: no output{n} (runner.stall_timeout)"
            return ev.fail("transient", why, "timed_out")
        if raw.timed_out:
            limit = f" after {traits.timeout_s:g} s (runner.timeout)" if traits.timeout_s else ""
            return ev.fail("transient", f"timed out{limit}", "timed_out")
        if raw.cluster_state in CLUSTER_END_STATES:
            outcome, ftype, why = CLUSTER_END_STATES[raw.cluster_state]
            return ev.fail(ftype, why, outcome)
        if raw.signal is not None:
            return ev.fail("transient", f"killed by signal {raw.signal}")
        if ev.claude is not None and ev.claude.denied_tools and not traits.allow_permission_denials:
            # Whatever the exit code and is_error say: the agent was blocked, retrying
            # with the same permissions cannot help.
            return ev.fail("permanent", denial_message(ev.claude.denied_tools))
        return None

    def _failure(
        self,
        ev: _Evidence,
        why: str,
        code: int | None,
        traits: RunnerTraits,
        now: float | None,
        zone: tzinfo | None,
    ) -> Verdict:
        """A failed attempt by its text: login, usage limit, the agent's own codes, patterns."""
        lowered = ev.text.lower()
        said = sanitize(ev.text.strip())
        if any(p.search(lowered) for p in self.login):
            agent = "claude" if ev.claude else "codex" if ev.codex else None
            agent = agent or limits.agent_of(traits.program)
            message = sanitize(limits.login_help(agent, traits.user, said))
            return ev.verdict("interrupted", message=message, trouble="agent_login")
        if any(p.search(lowered) for p in self.usage):
            reset = reset_at(ev.text, now, zone) if now is not None else None
            at = reset.at if reset is not None else None
            notes = (reset.note,) if reset is not None and reset.note else ()
            return ev.verdict("limited", message=said, limit_until=at, notes=notes)
        if ev.claude is not None and ev.claude.subtype in CLAUDE_CAPS:
            return ev.fail("permanent", f"{why}: {CLAUDE_CAPS[ev.claude.subtype]}")
        if ev.claude is not None and ev.claude.api_error_status in TRANSIENT_API_STATUS:
            return ev.fail("transient", f"{why} (API status {ev.claude.api_error_status})")
        if code in self.transient_exit_codes:
            return ev.fail("transient", why)
        return ev.fail(self.failure_type(lowered) or "permanent", why)


def hook_failed(name: str, why: str) -> Verdict:
    """A ``before_feature`` hook that failed fails the attempt as transient (SPEC 5)."""
    return Verdict("failed", "transient", sanitize(f"hook {name} failed: {why}"))


def retry_hint(text: str, now: float, zone: tzinfo | None = None) -> float | None:
    """Seconds to wait that the failure text asks for (0 once passed), or None."""
    at = reset_at(text, now, zone).at
    return None if at is None else max(0.0, at - now)
