"""The shapes of the morning report (SPEC 14), defined once for the daemon and batchctl.

``report.build`` makes a ``Report``, ``reportrender`` prints it, the ``report``
command sends it; batchctl imports this module only for type checking. The
other commands' shapes are ``shapes``'s. Types only: nothing here computes or
reads anything.
"""

from __future__ import annotations

from typing import Annotated, NotRequired, TypedDict

import msgspec

from batchd.shapes import BatchRef


class ReportArgs(TypedDict):
    batch_ids: NotRequired[list[BatchRef]]  # none: every batch active or finished since since_s
    since_s: NotRequired[Annotated[float, msgspec.Meta(gt=0)]]


class ReportFeature(TypedDict):
    """One feature of a batch. A figure no attempt recorded (an older version's entry) is
    None, shown as "–"; costs are rounded to ``report.COST_DIGITS`` so that they add up."""

    index: int
    feature: str
    # completed, failed, skipped, cancelled, pending, running, verifying, merging,
    # retry_wait (a retry is due later), limited (waits for the agent's usage limit)
    outcome: str
    attempts: int
    duration_s: float | None  # agent time: the sum over its attempts (a running one so far)
    cost_usd: float | None
    tokens: int | None
    tokens_estimated: bool
    commits: int | None  # git, summed over its attempts; None when no attempt has evidence
    files_changed: int | None
    insertions: int | None
    deletions: int | None
    dirty: bool | None  # its last attempt with evidence left uncommitted changes
    check: str | None  # passed, failed, timed_out, running; None: no check ran
    check_exit_code: int | None
    error: str | None  # why it failed (a failed feature), else its last attempt's message
    session_id: str | None  # the agent's conversation of its last attempt that named one
    log_path: str | None  # the log of its last attempt


class ReportFailure(TypedDict):
    batch_id: str
    seq: int
    name: str
    index: int
    feature: str
    reason: str
    attempts: int
    log_path: str | None
    session_id: str | None


class ReportPause(TypedDict):
    batch_id: str | None  # None: the whole queue is paused
    seq: int | None
    name: str | None
    reason: str
    hint: str  # what to do before the command
    command: str  # the command that lifts the pause


class ReportLimitWait(TypedDict):
    runner: str
    until: str
    since: str
    message: str
    command: str  # ends the wait now


class ReportBreaker(TypedDict):
    batch_id: str
    seq: int
    name: str
    consecutive_failures: int
    opened_at: str | None
    command: str


class ReportAttention(TypedDict):
    failed: list[ReportFailure]
    paused: list[ReportPause]
    limit_waits: list[ReportLimitWait]
    breakers: list[ReportBreaker]  # open breakers of batches not already paused by them


class ReportCounts(TypedDict):
    features: int
    completed: int
    failed: int
    skipped: int
    pending: int  # not run yet, waiting for a retry or a usage limit
    running: int
    cancelled: int  # never to run: their batch was cancelled
    wall_s: float | None  # from the first attempt's start to the end (now, if unfinished)
    agent_s: float  # the attempts' durations added up
    cost_usd: float  # the sum of the features' rounded costs
    tokens: int
    tokens_estimated: bool  # some of them were counted as output bytes / 4
    commits: int
    insertions: int
    deletions: int


class ReportBatch(TypedDict):
    batch_id: str
    seq: int
    name: str
    status: str
    pause_reason: str | None
    runner: str
    cwd: str | None
    created_at: str
    updated_at: str
    circuit_breaker_open: bool
    consecutive_failures: int
    counts: ReportCounts
    features: list[ReportFeature]
    # A worktree batch's only (SPEC 15): its branch, and in words its base, what
    # merge_into_base did and which worktrees were kept for changes no commit holds.
    branch: NotRequired[str | None]
    git_note: NotRequired[str | None]


class Report(TypedDict):
    generated_at: str
    since: str | None  # the start of the window, or None when batches were named
    needs_attention: ReportAttention
    batches: list[ReportBatch]
    totals: ReportCounts
