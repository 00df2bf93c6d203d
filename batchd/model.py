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
Outcome = Literal["completed", "failed", "timed_out", "interrupted"]
FailureType = Literal["transient", "permanent"]
SourceType = Literal["file", "github_issues"]

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


class Attempt(msgspec.Struct, kw_only=True):
    """One run of one feature; written when it starts, completed when it ends."""

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


class DaemonState(msgspec.Struct, kw_only=True):
    queue_paused: bool = False
    pause_reason: str | None = None
    next_seq: int = 1
    updated_at: str | None = None


class UserState(msgspec.Struct, kw_only=True):
    batch_retry_enabled: bool | None = None
    updated_at: str | None = None


class AuditEvent(msgspec.Struct, kw_only=True, omit_defaults=False):
    timestamp: str
    event_type: Literal[
        "retry_attempt", "retry_decision", "circuit_breaker_triggered", "circuit_breaker_reset"
    ]
    batch_id: str
    feature_index: int | None = None
    retry_count: int = 0
    global_retry_count: int = 0
    failure_type: FailureType | None = None
    decision: str | None = None
    reason: str | None = None
    error_message: str | None = None


class BatchRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A ``*.json`` spool entry, as written by ``batchctl submit``."""

    features: list[str]
    source_type: SourceType = "file"
    issue_numbers: list[int] | None = None
    cwd: str | None = None
    name: str | None = None
