"""One attempt's record in ``processing_history``: opened, moved to its check, closed. Pure.

An attempt is written when it starts (with the runner's pid or job id, and the
commit its work tree was at), may pass through ``verifying`` (the agent said
completed; its check runs: SPEC 14), and is closed with its outcome and the
evidence of what it did: tokens, cost, the agent's session, what the check
said, what it changed in git. ``Batch`` decides what an outcome does to the
batch; this module only fills in the record.
"""

from __future__ import annotations

from dataclasses import dataclass

from batchd.classify import Verdict
from batchd.model import Attempt, GitEvidence, VerifyResult, parse_iso, utc_iso


@dataclass(frozen=True)
class Evidence:
    """What the daemon learned of an attempt besides its verdict (SPEC 14)."""

    git: GitEvidence | None = None  # None: not in a git work tree, or git failed
    verify: VerifyResult | None = None  # the check, when one ran
    verified: bool | None = None  # passed, failed (or changed nothing), or none ran


def opened(
    *,
    index: int,
    number: int,
    now: float,
    pid: int | None,
    pid_start_time: int | None,
    job_id: str | None,
    run_id: str | None,
    git_head: str | None,
    where: tuple[str, str] | None = None,
) -> Attempt:
    """The record of an attempt that has just started (``where``: the worktree and branch
    of a worktree batch's feature, SPEC 15)."""
    return Attempt(
        feature_index=index,
        attempt=number,
        started_at=utc_iso(now),
        pid=pid,
        pid_start_time=pid_start_time,
        job_id=job_id,
        run_id=run_id,
        phase="running",
        git=GitEvidence(head_before=git_head) if git_head else None,
        worktree=where[0] if where else None,
        branch=where[1] if where else None,
    )


def verifying(
    attempt: Attempt, verdict: Verdict, exit_code: int | None, git: GitEvidence | None
) -> None:
    """The agent said completed and its check starts: what the agent reported is kept
    (a restart runs the check again from here, never the agent)."""
    attempt.phase = "verifying"
    attempt.exit_code = exit_code
    attempt.tokens = verdict.tokens
    attempt.cost_usd = verdict.cost_usd
    _agent_facts(attempt, verdict)
    if git is not None:
        attempt.git = git


def merging(attempt: Attempt, verdict: Verdict, exit_code: int | None, ev: Evidence) -> None:
    """A parallel feature completed and passed its check; its merge starts (SPEC 15). What
    the agent reported and what the check said are kept: a restart merges again from here."""
    verifying(attempt, verdict, exit_code, ev.git)
    attempt.phase = "merging"
    attempt.verify = ev.verify
    attempt.verified = ev.verified


def merged_evidence(attempt: Attempt) -> Evidence:
    """The evidence recorded when the merge started (after a restart)."""
    return Evidence(git=attempt.git, verify=attempt.verify, verified=attempt.verified)


def agent_verdict(attempt: Attempt) -> Verdict:
    """The agent's ``completed`` as recorded when its check (or merge) started (after a
    restart)."""
    return Verdict(
        "completed",
        tokens=attempt.tokens,
        cost_usd=attempt.cost_usd,
        session_id=attempt.session_id,
        tokens_estimated=bool(attempt.tokens_estimated),
    )


def closed(
    attempt: Attempt,
    verdict: Verdict,
    now: float,
    exit_code: int | None,
    evidence: Evidence | None = None,
) -> None:
    """Fill in the outcome and the evidence of an attempt that ended."""
    attempt.finished_at = utc_iso(now)
    attempt.duration_s = round(max(0.0, now - parse_iso(attempt.started_at)), 6)
    attempt.outcome = verdict.outcome
    attempt.phase = None
    attempt.exit_code = exit_code
    attempt.failure_type = verdict.failure_type
    attempt.error_message = verdict.message
    attempt.tokens = verdict.tokens
    attempt.cost_usd = verdict.cost_usd
    _agent_facts(attempt, verdict)
    if evidence is not None:
        attempt.git = evidence.git
        attempt.verify = evidence.verify
        attempt.verified = evidence.verified


def _agent_facts(attempt: Attempt, verdict: Verdict) -> None:
    """What the agent said of itself: its session, and whether tokens were counted."""
    attempt.session_id = verdict.session_id or attempt.session_id
    attempt.tokens_estimated = verdict.tokens_estimated if verdict.tokens is not None else None
