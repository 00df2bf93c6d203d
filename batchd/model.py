"""The on-disk schema: every structure batchd writes, as msgspec structs.

Field names follow SPEC section 4 (and the seed's implementation). Changing a
name here changes the public file format: ``tests/data/state.json`` is decoded
by a test so that this cannot happen by accident.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import msgspec

SCHEMA_VERSION = 1

BatchStatus = Literal["pending", "in_progress", "paused", "completed", "failed", "cancelled"]
# ``limited``: the agent's usage limit (SPEC 13): not a failure, the feature runs again later.
Outcome = Literal["completed", "failed", "timed_out", "interrupted", "limited"]
FailureType = Literal["transient", "permanent"]
SourceType = Literal["file", "github_issues"]
Isolation = Literal["worktree"]
# Where an attempt without an outcome stands (SPEC 14, 15): null (old entries) = running.
Phase = Literal["running", "verifying", "merging"]
# Where a worktree of batchd stands in its git life (SPEC 15; the table is ``worktreesteps``).
GitStep = Literal[
    "absent",  # nothing made
    "creating",  # begun: branch and worktree being made
    "ready",  # the worktree is there (features run in it)
    "merging",  # begun: a feature's branch being merged into the batch branch
    "merged",  # its commits are in the batch branch
    "unmerged",  # the merge conflicted (aborted) or failed; the branch stays
    "forwarding",  # begun: the base branch being fast-forwarded (merge_into_base)
    "forwarded",  # that step is over (moved, or refused with its reason)
    "removing",  # begun: the worktree being removed (the branch stays)
    "removed",
    "kept",  # not removed: it holds changes no commit holds (until prune)
]
DEFAULT_RUNNER = "default"  # the profile that is ``[runner]`` itself (SPEC 13)

FINISHED: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


def utc_iso(ts: float) -> str:
    """``2026-11-24T05:06:53.123456Z``: the one timestamp form of every file."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def parse_iso(text: str) -> float:
    """The inverse of ``utc_iso`` (``fromisoformat``: 30 times faster than ``strptime``)."""
    if not text.endswith("Z"):
        raise ValueError(f"not a UTC timestamp ending in Z: {text!r}")
    return datetime.fromisoformat(text).timestamp()


def batch_id_for(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("batch-%Y%m%d-%H%M%S-%f")


class FailedFeature(msgspec.Struct, kw_only=True):
    feature_index: int
    error_message: str
    timestamp: str
    retry_count: int


class VerifyResult(msgspec.Struct, kw_only=True):
    """The check after an attempt the agent called completed (SPEC 14)."""

    exit_code: int | None  # None: it timed out or was stopped
    duration_s: float
    output_tail: str  # sanitised, the last lines


class GitEvidence(msgspec.Struct, kw_only=True):
    """What an attempt changed in its git work tree (SPEC 14); committed and not together."""

    head_before: str | None = None
    head_after: str | None = None
    commits: int = 0
    subjects: list[str] = msgspec.field(default_factory=list)  # up to 20, sanitised
    files_changed: int = 0
    insertions: int = 0
    deletions: int = 0
    dirty: bool = False


class Attempt(msgspec.Struct, kw_only=True):
    """One run of one feature; written when it starts, completed when it ends.

    Fields after ``run_id`` were added later (SPEC 13-15): an entry written by an
    older version has them null, and views show "–" for them.
    """

    feature_index: int
    attempt: int
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    outcome: Outcome | None = None
    exit_code: int | None = None
    failure_type: FailureType | None = None
    error_message: str | None = None
    tokens: int | None = None
    cost_usd: float | None = None
    pid: int | None = None
    pid_start_time: int | None = None
    job_id: str | None = None  # the Slurm job (runner.engine = "slurm"), else null
    run_id: str | None = None  # its BATCHD_RUN_ID, to find the run again after a restart
    phase: Phase | None = None  # while it has no outcome: running, verifying, merging
    tokens_estimated: bool | None = None  # tokens counted as output bytes / 4, not reported
    session_id: str | None = None  # the agent's conversation ('claude --resume ID')
    verified: bool | None = None  # the check passed (true), failed (false), none ran (null)
    verify: VerifyResult | None = None
    git: GitEvidence | None = None
    worktree: str | None = None  # a parallel feature's own worktree (SPEC 15)
    branch: str | None = None  # ... and its branch


class FeatureWorktree(msgspec.Struct, kw_only=True):
    """The worktree and branch of one attempt of a feature of a parallel batch (SPEC 15)."""

    feature_index: int
    attempt: int
    branch: str
    worktree: str
    step: GitStep = "absent"
    note: str | None = None  # kept: why; merged: the merge; unmerged: the conflict


class GitRecord(msgspec.Struct, kw_only=True):
    """A worktree batch's git life (SPEC 15), recorded when its first feature starts."""

    repo: str  # the top level of the batch's cwd's work tree, after realpath
    base_ref: str | None  # the branch checked out there, None when detached
    base_commit: str  # the batch branch starts here
    subdir: str = ""  # the batch's cwd inside the repository ("" at the top)
    branch: str  # batchd/<batch_id>: the batch's result
    worktree: str  # the batch's own worktree, under worktree.dir
    step: GitStep = "absent"
    note: str | None = None  # kept: why (the path stays until prune)
    forward: str | None = None  # worktree.merge_into_base: what happened, in words
    features: list[FeatureWorktree] = msgspec.field(default_factory=list)


class BatchState(msgspec.Struct, kw_only=True):
    schema_version: int = SCHEMA_VERSION
    batch_id: str
    seq: int
    name: str
    features_file: str
    source_sha256: str
    total_features: int
    features: list[str]
    current_index: int = 0
    completed_features: list[int] = msgspec.field(default_factory=list)
    failed_features: list[FailedFeature] = msgspec.field(default_factory=list)
    skipped_features: list[int] = msgspec.field(default_factory=list)
    context_token_estimate: int = 0
    status: BatchStatus = "pending"
    pause_reason: str | None = None
    issue_numbers: list[int] | None = None
    source_type: SourceType = "file"
    cwd: str | None = None
    cost_usd: float = 0.0
    created_at: str
    updated_at: str
    processing_history: list[Attempt] = msgspec.field(default_factory=list)
    # Added later (SPEC 13-15); a state file of an older version loads with the defaults.
    runner: str = DEFAULT_RUNNER  # the runner profile
    verify: list[str] | None = None  # the batch's own check (argv), over the profile's
    isolation: Isolation | None = None
    parallel: bool = False
    git: GitRecord | None = None  # a worktree batch's repository, branch, worktrees (SPEC 15)


class RetryState(msgspec.Struct, kw_only=True):
    batch_id: str
    retry_counts: dict[str, int] = msgspec.field(default_factory=dict)
    global_retry_count: int = 0
    consecutive_failures: int = 0
    circuit_breaker_open: bool = False
    breaker_opened_at: str | None = None
    next_attempt_at: str | None = None
    created_at: str
    updated_at: str


class LimitWait(msgspec.Struct, kw_only=True):
    """A runner profile waiting for its agent's usage limit to reset (SPEC 13)."""

    until: str  # nothing of the profile starts before this (reset + limits.reset_margin)
    since: str
    message: str  # sanitised text of the agent that said so


class DaemonState(msgspec.Struct, kw_only=True):
    queue_paused: bool = False
    pause_reason: str | None = None
    next_seq: int = 1
    updated_at: str | None = None
    limit_waits: dict[str, LimitWait] = msgspec.field(default_factory=dict)


class UserState(msgspec.Struct, kw_only=True):
    batch_retry_enabled: bool | None = None
    updated_at: str | None = None


class AuditEvent(msgspec.Struct, kw_only=True, omit_defaults=False):
    timestamp: str
    event_type: Literal[
        "retry_attempt",
        "retry_decision",
        "circuit_breaker_triggered",
        "circuit_breaker_reset",
        "usage_limit_wait",
        "usage_limit_end",
    ]
    batch_id: str
    feature_index: int | None = None
    retry_count: int = 0
    global_retry_count: int = 0
    failure_type: FailureType | None = None
    decision: str | None = None
    reason: str | None = None
    error_message: str | None = None
    until: str | None = None  # usage_limit_wait: when the wait ends


class BatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A ``*.json`` spool entry, as written by ``batchctl submit``."""

    features: list[str]
    source_type: SourceType = "file"
    issue_numbers: list[int] | None = None
    cwd: str | None = None
    name: str | None = None
    runner: str | None = None  # a runner profile (SPEC 13)
    verify: list[str] | None = None  # the batch's own check (SPEC 14)
    isolation: Isolation | None = None  # SPEC 15
    parallel: bool = False
