"""The on-disk schema cannot drift: checked-in examples decode, and every SPEC field exists."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from batchd.model import Attempt, BatchState, RetryState, parse_iso, utc_iso

DATA = Path(__file__).resolve().parent / "data"

STATE_FIELDS = {
    "schema_version",
    "batch_id",
    "seq",
    "name",
    "features_file",
    "source_sha256",
    "total_features",
    "features",
    "current_index",
    "completed_features",
    "failed_features",
    "context_token_estimate",
    "status",
    "pause_reason",
    "issue_numbers",
    "source_type",
    "cwd",
    "cost_usd",
    "created_at",
    "updated_at",
    "processing_history",
}
ATTEMPT_FIELDS = {
    "feature_index",
    "attempt",
    "started_at",
    "finished_at",
    "duration_s",
    "outcome",
    "exit_code",
    "failure_type",
    "error_message",
    "tokens",
    "cost_usd",
    "pid",
    "pid_start_time",
}
RETRY_FIELDS = {
    "batch_id",
    "retry_counts",
    "global_retry_count",
    "consecutive_failures",
    "circuit_breaker_open",
    "created_at",
    "updated_at",
    "breaker_opened_at",
    "next_attempt_at",
}


def test_checked_in_state_decodes_and_round_trips() -> None:
    """tests/data/state.json decodes as BatchState and re-encodes to the same object."""
    raw = (DATA / "state.json").read_bytes()
    state = msgspec.json.decode(raw, type=BatchState)
    assert state.schema_version == 1 and state.processing_history[-1].outcome is None
    assert json.loads(msgspec.json.encode(state)) == json.loads(raw)


def test_checked_in_retry_state_decodes() -> None:
    """tests/data/retry_state.json decodes as RetryState and round-trips."""
    raw = (DATA / "retry_state.json").read_bytes()
    retry = msgspec.json.decode(raw, type=RetryState)
    assert json.loads(msgspec.json.encode(retry)) == json.loads(raw)


def test_field_names_are_the_spec_table() -> None:
    """The structs carry exactly the SPEC's fields (plus skipped_features)."""
    assert set(BatchState.__struct_fields__) == STATE_FIELDS | {"skipped_features"}
    assert set(Attempt.__struct_fields__) == ATTEMPT_FIELDS
    assert set(RetryState.__struct_fields__) == RETRY_FIELDS


def test_timestamp_form() -> None:
    """Every timestamp is ISO 8601 UTC with microseconds and Z, and parses back."""
    stamp = utc_iso(1795496813.123456)
    assert stamp == "2026-11-24T05:06:53.123456Z"
    assert abs(parse_iso(stamp) - 1795496813.123456) < 1e-6
