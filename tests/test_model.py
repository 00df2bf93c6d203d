"""The on-disk schema (SPEC section 4) cannot drift by accident.

``tests/data/state.json`` and ``tests/data/retry_state.json`` are checked-in
examples of what a batch directory holds. They must decode with the daemon's
decoders, re-encode to the same objects, and carry exactly the SPEC's fields.
A rename in model.py breaks these tests before it breaks a user's state dir.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from batchd.model import (
    SCHEMA_VERSION,
    Attempt,
    AuditEvent,
    BatchRequest,
    BatchState,
    DaemonState,
    FailedFeature,
    RetryState,
    UserState,
    batch_id_for,
    parse_iso,
    utc_iso,
)
from batchd.protocol import is_batch_id

DATA = Path(__file__).resolve().parent / "data"
STAMP_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")

# SPEC section 4, the state.json table.
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
# What the model adds to the table: features never to run (batchctl skip), the runner
# profile (SPEC 13), the batch's own check (SPEC 14), worktree isolation (SPEC 15).
STATE_EXTRA_FIELDS = {"skipped_features", "runner", "verify", "isolation", "parallel", "git"}
FAILED_FEATURE_FIELDS = {"feature_index", "error_message", "timestamp", "retry_count"}
# BATCHD_RUN_ID (to find the run again after a restart), the phase of an open attempt, and
# the evidence of SPEC 14 (session, check, git) and 15 (a parallel feature's worktree).
ATTEMPT_EXTRA_FIELDS = {
    "run_id",
    "phase",
    "tokens_estimated",
    "session_id",
    "verified",
    "verify",
    "git",
    "worktree",
    "branch",
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
    "job_id",
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
AUDIT_FIELDS = {
    "timestamp",
    "event_type",
    "batch_id",
    "feature_index",
    "retry_count",
    "global_retry_count",
    "failure_type",
    "decision",
    "reason",
    "error_message",
    "until",  # usage_limit_wait (SPEC 13)
}
DAEMON_FIELDS = {"queue_paused", "pause_reason", "next_seq", "limit_waits"}
REQUEST_FIELDS = {
    "features",
    "source_type",
    "issue_numbers",
    "cwd",
    "name",
    "runner",
    "verify",
    "isolation",
    "parallel",
}

STATE_DECODER = msgspec.json.Decoder(BatchState)
RETRY_DECODER = msgspec.json.Decoder(RetryState)


def raw_state() -> bytes:
    return (DATA / "state.json").read_bytes()


def raw_retry() -> bytes:
    return (DATA / "retry_state.json").read_bytes()


def timestamps(obj: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (key, value) in ``obj`` whose key names a time."""
    found: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += timestamps(v, k)
    elif isinstance(obj, list):
        for v in obj:
            found += timestamps(v, key)
    elif key.endswith(("_at", "timestamp")) and obj is not None:
        found.append((key, obj))
    return found


# --- the checked-in state.json --------------------------------------------------------


def test_state_example_decodes_and_re_encodes_unchanged() -> None:
    """tests/data/state.json decodes as BatchState and re-encodes to the same object."""
    state = STATE_DECODER.decode(raw_state())
    assert json.loads(msgspec.json.encode(state)) == json.loads(raw_state())
    assert STATE_DECODER.decode(msgspec.json.encode(state)) == state


def test_state_of_the_previous_version_loads_with_the_new_fields_at_their_defaults() -> None:
    """A state.json written before SPEC 13-15 (tests/data/v0.2-state.json) loads unchanged:
    the new fields take their defaults, and old attempts have no evidence (shown as "-")."""
    old = json.loads((DATA / "v0.2-state.json").read_bytes())
    state = STATE_DECODER.decode((DATA / "v0.2-state.json").read_bytes())
    again = json.loads(msgspec.json.encode(state))
    assert {k: v for k, v in again.items() if k in old and k != "processing_history"} == {
        k: v for k, v in old.items() if k != "processing_history"
    }
    for new_a, old_a in zip(again["processing_history"], old["processing_history"], strict=True):
        assert {k: v for k, v in new_a.items() if k in old_a} == old_a
    assert (state.runner, state.verify, state.isolation, state.parallel) == (
        "default",
        None,
        None,
        False,
    )
    for a in state.processing_history:
        assert (a.session_id, a.verify, a.git, a.tokens_estimated, a.phase) == (
            None,
            None,
            None,
            None,
            None,
        )


def test_state_example_has_exactly_the_spec_fields() -> None:
    """The example's keys, and BatchState's fields, are the SPEC table's plus the model's extras."""
    obj = json.loads(raw_state())
    assert set(obj) == STATE_FIELDS | STATE_EXTRA_FIELDS
    assert set(BatchState.__struct_fields__) == STATE_FIELDS | STATE_EXTRA_FIELDS
    for attempt in obj["processing_history"]:
        assert set(attempt) == ATTEMPT_FIELDS | ATTEMPT_EXTRA_FIELDS
    for failed in obj["failed_features"]:
        assert set(failed) == FAILED_FEATURE_FIELDS
    assert set(Attempt.__struct_fields__) == ATTEMPT_FIELDS | ATTEMPT_EXTRA_FIELDS
    assert set(FailedFeature.__struct_fields__) == FAILED_FEATURE_FIELDS


def test_state_example_is_realistic() -> None:
    """The example has failed, completed, interrupted and running attempts that add up."""
    state = STATE_DECODER.decode(raw_state())
    assert state.schema_version == SCHEMA_VERSION == 1 and is_batch_id(state.batch_id)
    outcomes = [a.outcome for a in state.processing_history]
    assert outcomes == ["failed", "completed", "failed", "interrupted", None]
    assert state.total_features == len(state.features)
    assert state.completed_features == [0]
    assert [f.feature_index for f in state.failed_features] == [1]
    assert state.cost_usd == pytest.approx(sum(a.cost_usd or 0 for a in state.processing_history))
    assert state.context_token_estimate == sum(a.tokens or 0 for a in state.processing_history)
    for a in state.processing_history:
        if a.finished_at is not None and a.duration_s is not None:
            assert a.duration_s == pytest.approx(parse_iso(a.finished_at) - parse_iso(a.started_at))


def test_every_timestamp_uses_the_one_form() -> None:
    """Every timestamp in both examples is ISO 8601 UTC with microseconds and Z."""
    stamps = timestamps(json.loads(raw_state())) + timestamps(json.loads(raw_retry()))
    assert len(stamps) >= 10
    for key, value in stamps:
        assert STAMP_RE.match(value), (key, value)
        assert utc_iso(parse_iso(value)) == value


def test_a_renamed_or_mistyped_field_does_not_decode() -> None:
    """A missing required field or a wrong value type is a decode error, not a silent default."""
    obj = json.loads(raw_state())
    del obj["batch_id"]
    with pytest.raises(msgspec.ValidationError, match="batch_id"):
        STATE_DECODER.decode(json.dumps(obj))
    obj = json.loads(raw_state())
    obj["status"] = "done"
    with pytest.raises(msgspec.ValidationError, match="status"):
        STATE_DECODER.decode(json.dumps(obj))
    obj = json.loads(raw_state())
    obj["processing_history"][0]["outcome"] = "crashed"
    with pytest.raises(msgspec.ValidationError, match="outcome"):
        STATE_DECODER.decode(json.dumps(obj))


# --- the checked-in retry_state.json --------------------------------------------------


def test_retry_state_example_decodes_and_re_encodes_unchanged() -> None:
    """tests/data/retry_state.json decodes as RetryState and re-encodes to the same object."""
    retry = RETRY_DECODER.decode(raw_retry())
    assert json.loads(msgspec.json.encode(retry)) == json.loads(raw_retry())
    assert retry.retry_counts == {"0": 1} and retry.global_retry_count == 1


def test_retry_state_has_exactly_the_spec_fields() -> None:
    """retry_state.json carries the seed's fields plus breaker_opened_at and next_attempt_at."""
    assert set(json.loads(raw_retry())) == RETRY_FIELDS
    assert set(RetryState.__struct_fields__) == RETRY_FIELDS


def test_examples_belong_together() -> None:
    """The two examples describe the same batch."""
    state = STATE_DECODER.decode(raw_state())
    retry = RETRY_DECODER.decode(raw_retry())
    assert retry.batch_id == state.batch_id and retry.created_at == state.created_at
    retried = {a.feature_index for a in state.processing_history if a.attempt > 1}
    assert {int(k) for k, v in retry.retry_counts.items() if v} == retried


# --- the other structures ------------------------------------------------------------


def test_other_structures_field_names() -> None:
    """Audit events, daemon.json and batch requests use the SPEC's field names."""
    assert set(AuditEvent.__struct_fields__) == AUDIT_FIELDS
    assert set(DaemonState.__struct_fields__) == DAEMON_FIELDS | {"updated_at"}
    assert set(UserState.__struct_fields__) == {"batch_retry_enabled", "updated_at"}
    assert set(BatchRequest.__struct_fields__) == REQUEST_FIELDS


def test_audit_event_is_written_with_every_field() -> None:
    """An audit line has every SPEC field, null when not applicable."""
    ev = AuditEvent(timestamp=utc_iso(0), event_type="circuit_breaker_reset", batch_id="b")
    assert set(json.loads(msgspec.json.encode(ev))) == AUDIT_FIELDS


def test_defaults_of_a_fresh_state() -> None:
    """A fresh BatchState starts pending at index 0 with empty lists and schema_version 1."""
    s = BatchState(
        batch_id="b",
        seq=1,
        name="n",
        features_file="f",
        source_sha256="",
        total_features=0,
        features=[],
        created_at="c",
        updated_at="u",
    )
    assert (s.schema_version, s.status, s.current_index, s.source_type) == (1, "pending", 0, "file")
    assert s.processing_history == [] and s.completed_features == [] and s.cost_usd == 0.0
    assert DaemonState() == DaemonState(queue_paused=False, pause_reason=None, next_seq=1)


def test_timestamp_and_batch_id_forms() -> None:
    """utc_iso is the SPEC's form; batch ids are batch-YYYYMMDD-HHMMSS-ffffff in UTC."""
    assert utc_iso(1795496813.123456) == "2026-11-24T05:06:53.123456Z"
    assert utc_iso(1795496813.0) == "2026-11-24T05:06:53.000000Z"
    assert parse_iso("2026-11-24T05:06:53.123456Z") == pytest.approx(1795496813.123456)
    assert batch_id_for(1795496813.123456) == "batch-20261124-050653-123456"
    assert is_batch_id(batch_id_for(0.0))
