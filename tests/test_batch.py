"""The batch state machine (batch.py), h11 style: feed it events, assert the whole state
after each step. Pure: no loop, no files, time injected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from batchd.batch import PAUSE_BREAKER, PAUSE_COST, PAUSE_USER, Batch, new_batch
from batchd.classify import Verdict
from batchd.errors import BadArgs, BadState, Refused
from batchd.model import Attempt, BatchState, FailedFeature, RetryState, utc_iso
from batchd.parse import ParsedBatch
from batchd.policy import RetryPolicy
from batchd.transitions import Settings, Step

T0 = 1_800_000_000.0
BID = "batch-20261124-050653-123456"
OK = Verdict("completed", tokens=10, cost_usd=0.1)
TRANSIENT = Verdict("failed", "transient", "exit code 1: ConnectionError", tokens=4)
PERMANENT = Verdict("failed", "permanent", "exit code 1: TypeError", tokens=4)
INTERRUPTED = Verdict("interrupted", None, "stopped by batchd")
DEFAULT = Settings(policy=RetryPolicy(jitter="none"))
DATA = Path(__file__).resolve().parent / "data"


def make(n: int = 3, **parsed: Any) -> Batch:
    return new_batch(
        batch_id=BID,
        seq=7,
        parsed=ParsedBatch(features=[f"feature {i}" for i in range(n)], name="todo", **parsed),
        features_file="todo.txt",
        source_sha256="ab" * 32,
        now=T0,
    )


def run(
    b: Batch,
    verdict: Verdict,
    *,
    at: float = T0,
    consent: bool = True,
    settings: Settings = DEFAULT,
    hint: float | None = None,
    exit_code: int | None = 0,
) -> Step:
    """Start the next feature at ``at`` and record ``verdict`` one second later."""
    b.begin(index=b.state.current_index, now=at, pid=100, pid_start_time=200)
    return b.record(
        verdict,
        exit_code=exit_code,
        consent=consent,
        hint_s=hint,
        settings=settings,
        now=at + 1,
        rand=lambda: 0.0,
    )


def view(b: Batch) -> dict[str, Any]:
    """The whole state of a batch, compactly: every field a transition may change."""
    s, r = b.state, b.retry
    return {
        "status": s.status,
        "pause_reason": s.pause_reason,
        "current_index": s.current_index,
        "completed": s.completed_features,
        "failed": [(f.feature_index, f.retry_count) for f in s.failed_features],
        "skipped": s.skipped_features,
        "history": [
            (a.feature_index, a.attempt, a.outcome, a.failure_type) for a in s.processing_history
        ],
        "retry_counts": r.retry_counts,
        "global": r.global_retry_count,
        "consecutive": r.consecutive_failures,
        "breaker": r.circuit_breaker_open,
        "next_attempt_at": r.next_attempt_at,
    }


def expect(**changes: Any) -> dict[str, Any]:
    """The view of a fresh batch, with ``changes``."""
    base: dict[str, Any] = {
        "status": "pending",
        "pause_reason": None,
        "current_index": 0,
        "completed": [],
        "failed": [],
        "skipped": [],
        "history": [],
        "retry_counts": {},
        "global": 0,
        "consecutive": 0,
        "breaker": False,
        "next_attempt_at": None,
    }
    assert set(changes) <= set(base)
    return base | changes


_KINDS: dict[str, type[Refused]] = {"bad_state": BadState, "bad_args": BadArgs}


class _Refused:
    """``with _Refused("bad_state"):`` asserts the domain error of that kind (``BadState``)."""

    def __init__(self, code: str) -> None:
        self.kind = _KINDS[code]

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> bool:
        assert isinstance(exc, self.kind), f"expected {self.kind.__name__}, got {exc!r}"
        assert exc.message and BID in exc.message
        return True


# --- a new batch --------------------------------------------------------------------


def test_new_batch_whole_state() -> None:
    """A new batch is pending at index 0 with every field of the schema set."""
    b = make(2, cwd="/srv/app")
    stamp = utc_iso(T0)
    assert b.state == BatchState(
        schema_version=1,
        batch_id=BID,
        seq=7,
        name="todo",
        features_file="todo.txt",
        source_sha256="ab" * 32,
        total_features=2,
        features=["feature 0", "feature 1"],
        current_index=0,
        completed_features=[],
        failed_features=[],
        skipped_features=[],
        context_token_estimate=0,
        status="pending",
        pause_reason=None,
        issue_numbers=None,
        source_type="file",
        cwd="/srv/app",
        cost_usd=0.0,
        created_at=stamp,
        updated_at=stamp,
        processing_history=[],
    )
    assert b.retry == RetryState(batch_id=BID, created_at=stamp, updated_at=stamp)
    assert (b.finished, b.open_attempt(), b.wait_until(), b.attempt_number(0)) == (
        False,
        None,
        None,
        1,
    )
    assert b.runnable(T0, 0)


def test_github_batch_keeps_issue_numbers() -> None:
    """source_type and issue_numbers of a request are carried into the state."""
    b = make(2, source_type="github_issues", issue_numbers=[71, 72])
    assert (b.state.source_type, b.state.issue_numbers) == ("github_issues", [71, 72])


# --- running features ---------------------------------------------------------------


def test_begin_records_the_attempt_before_it_runs() -> None:
    """begin appends an open attempt with pid and start time; the batch is in progress."""
    b = make()
    a = b.begin(index=0, now=T0 + 5, pid=4242, pid_start_time=99)
    assert a == Attempt(
        feature_index=0,
        attempt=1,
        started_at=utc_iso(T0 + 5),
        pid=4242,
        pid_start_time=99,
        phase="running",
    )
    assert b.open_attempt() is a and b.state.updated_at == utc_iso(T0 + 5)
    assert view(b) == expect(status="in_progress", history=[(0, 1, None, None)])


def test_record_completed_whole_attempt_and_state() -> None:
    """A completed attempt closes with duration, exit code, tokens and cost; the index moves on."""
    b = make()
    b.begin(index=0, now=T0, pid=1, pid_start_time=2)
    step = b.record(
        OK, exit_code=0, consent=True, hint_s=None, settings=DEFAULT, now=T0 + 2.5, rand=lambda: 0
    )
    assert step == Step(events=(), retry_delay=None, finished=False)
    assert b.state.processing_history == [
        Attempt(
            feature_index=0,
            attempt=1,
            started_at=utc_iso(T0),
            finished_at=utc_iso(T0 + 2.5),
            duration_s=2.5,
            outcome="completed",
            exit_code=0,
            failure_type=None,
            error_message=None,
            tokens=10,
            cost_usd=0.1,
            pid=1,
            pid_start_time=2,
            tokens_estimated=False,
        )
    ]
    assert (b.state.context_token_estimate, b.state.cost_usd) == (10, 0.1)
    assert b.state.updated_at == utc_iso(T0 + 2.5) and b.open_attempt() is None
    assert view(b) == expect(
        status="in_progress", current_index=1, completed=[0], history=[(0, 1, "completed", None)]
    )


def test_all_completed_ends_completed() -> None:
    """Every feature completed: the batch ends 'completed' and the last step says finished."""
    b = make()
    steps = [run(b, OK, at=T0 + 10 * i) for i in range(3)]
    assert [s.finished for s in steps] == [False, False, True]
    assert view(b) == expect(
        status="completed",
        current_index=3,
        completed=[0, 1, 2],
        history=[(i, 1, "completed", None) for i in range(3)],
    )
    assert b.finished and not b.runnable(T0 + 100, 0)
    assert b.state.context_token_estimate == 30 and b.state.cost_usd == pytest.approx(0.3)


def test_permanent_failure_is_recorded_and_the_batch_moves_on() -> None:
    """A permanent failure adds one failed_features entry and the next feature is up."""
    b = make()
    step = run(b, PERMANENT, at=T0, exit_code=1)
    assert b.state.failed_features == [
        FailedFeature(
            feature_index=0,
            error_message="exit code 1: TypeError",
            timestamp=utc_iso(T0 + 1),
            retry_count=0,
        )
    ]
    assert step.retry_delay is None and not step.finished and step.reason == "permanent_failure"
    assert [(e.event_type, e.reason) for e in step.events] == [
        ("retry_decision", "permanent_failure")
    ]
    assert b.state.processing_history[0].exit_code == 1
    assert view(b) == expect(
        status="in_progress",
        current_index=1,
        failed=[(0, 0)],
        history=[(0, 1, "failed", "permanent")],
        consecutive=1,
    )


def test_transient_failure_is_retried_at_the_same_index() -> None:
    """A retried failure stays at its index with attempt 2 and a pending wait."""
    b = make()
    step = run(b, TRANSIENT, at=T0)
    assert step.retry_delay == 10.0 and step.reason == "under_retry_limit" and not step.finished
    assert [e.event_type for e in step.events] == ["retry_decision", "retry_attempt"]
    assert view(b) == expect(
        status="in_progress",
        history=[(0, 1, "failed", "transient")],
        retry_counts={"0": 1},
        **{"global": 1},
        consecutive=1,
        next_attempt_at=utc_iso(T0 + 11),
    )
    assert b.attempt_number(0) == 2 and b.wait_until() == pytest.approx(T0 + 11)
    b.clear_retry_wait(T0 + 11)
    assert b.retry.next_attempt_at is None and b.wait_until() is None
    run(b, OK, at=T0 + 11)
    assert view(b) == expect(
        status="in_progress",
        current_index=1,
        completed=[0],
        history=[(0, 1, "failed", "transient"), (0, 2, "completed", None)],
        retry_counts={"0": 1},
        **{"global": 1},
    )


def test_retries_run_out_then_the_feature_fails() -> None:
    """After max_per_feature retries the feature fails with its retry_count."""
    settings = Settings(policy=RetryPolicy(jitter="none", max_per_feature=2))
    b = make(1)
    for k in range(3):
        run(b, TRANSIENT, at=T0 + 100 * k, settings=settings)
    assert view(b) == expect(
        status="failed",
        current_index=1,
        failed=[(0, 2)],
        history=[(0, n, "failed", "transient") for n in (1, 2, 3)],
        retry_counts={"0": 2},
        **{"global": 2},
        consecutive=3,
    )
    assert b.state.failed_features[0].error_message == "exit code 1: ConnectionError"


def test_no_consent_no_retry() -> None:
    """Without consent a transient failure fails the feature at once."""
    b = make(1)
    step = run(b, TRANSIENT, consent=False)
    assert step.finished and step.events[0].reason == "consent_not_given"
    assert view(b) == expect(
        status="failed",
        current_index=1,
        failed=[(0, 0)],
        history=[(0, 1, "failed", "transient")],
        consecutive=1,
    )


def test_any_failure_ends_failed() -> None:
    """A batch with one failed feature and the rest completed ends 'failed'."""
    b = make()
    run(b, OK, at=T0)
    run(b, PERMANENT, at=T0 + 10)
    step = run(b, OK, at=T0 + 20)
    assert step.finished
    assert view(b) == expect(
        status="failed",
        current_index=3,
        completed=[0, 2],
        failed=[(1, 0)],
        history=[
            (0, 1, "completed", None),
            (1, 1, "failed", "permanent"),
            (2, 1, "completed", None),
        ],
        consecutive=0,
    )


def test_failure_without_message_or_type_is_recorded_as_permanent() -> None:
    """A failed verdict without a message or type still fails the feature, permanently."""
    b = make(1)
    run(b, Verdict("timed_out"))
    assert b.state.failed_features[0].error_message == "timed_out"
    assert b.retry.consecutive_failures == 1


def test_record_without_an_open_attempt_is_refused() -> None:
    """record with nothing running is a bad_state error."""
    b = make()
    with _Refused("bad_state"):
        b.record(
            OK, exit_code=0, consent=True, hint_s=None, settings=DEFAULT, now=T0, rand=lambda: 0
        )


# --- interruptions ------------------------------------------------------------------


def test_interrupted_attempt_is_rerun_with_its_number_uncharged() -> None:
    """An interrupted attempt keeps its number for the rerun; no counter moves."""
    b = make(2)
    step = run(b, INTERRUPTED, at=T0)
    assert step == Step()
    assert view(b) == expect(status="in_progress", history=[(0, 1, "interrupted", None)])
    assert b.attempt_number(0) == 1
    run(b, OK, at=T0 + 5)
    assert view(b) == expect(
        status="in_progress",
        current_index=1,
        completed=[0],
        history=[(0, 1, "interrupted", None), (0, 1, "completed", None)],
    )


def test_interrupted_retry_keeps_number_two() -> None:
    """An interrupted second attempt reruns as attempt 2, and the retry is not charged again."""
    b = make(1)
    run(b, TRANSIENT, at=T0)
    b.clear_retry_wait(T0 + 11)
    run(b, INTERRUPTED, at=T0 + 11)
    assert b.attempt_number(0) == 2
    run(b, OK, at=T0 + 20)
    assert view(b) == expect(
        status="completed",
        current_index=1,
        completed=[0],
        history=[
            (0, 1, "failed", "transient"),
            (0, 2, "interrupted", None),
            (0, 2, "completed", None),
        ],
        retry_counts={"0": 1},
        **{"global": 1},
    )


def test_mark_interrupted_after_a_crash() -> None:
    """A state reloaded with an open attempt: it is closed 'interrupted' and rerun uncharged."""
    b = make(2)
    b.begin(index=0, now=T0, pid=1, pid_start_time=2)
    reloaded = Batch(
        msgspec.json.decode(msgspec.json.encode(b.state), type=BatchState),
        msgspec.json.decode(msgspec.json.encode(b.retry), type=RetryState),
    )
    assert reloaded.open_attempt() is not None and reloaded.attempt_number(0) == 1
    closed = reloaded.mark_interrupted(T0 + 3, "daemon restarted")
    assert closed is not None
    assert (closed.outcome, closed.error_message, closed.finished_at, closed.duration_s) == (
        "interrupted",
        "daemon restarted",
        utc_iso(T0 + 3),
        3.0,
    )
    assert reloaded.mark_interrupted(T0 + 4, "again") is None
    assert view(reloaded) == expect(status="in_progress", history=[(0, 1, "interrupted", None)])
    assert reloaded.attempt_number(0) == 1


def test_reload_of_checked_in_state_rebuilds_the_indexes() -> None:
    """Batch() over tests/data/state.json knows what is settled and each feature's attempt."""
    state = msgspec.json.decode((DATA / "state.json").read_bytes(), type=BatchState)
    retry = msgspec.json.decode((DATA / "retry_state.json").read_bytes(), type=RetryState)
    b = Batch(state, retry)
    assert b.settled == {0, 1}
    assert [b.attempt_number(i) for i in range(3)] == [3, 2, 1]
    open_attempt = b.open_attempt()
    assert open_attempt is not None and open_attempt.feature_index == 2
    b.mark_interrupted(T0, "restart")
    run(b, OK, at=T0 + 1)
    assert (b.state.status, b.state.current_index, b.state.completed_features) == (
        "failed",
        3,
        [0, 2],
    )


def test_late_record_for_a_settled_feature_changes_nothing_but_the_attempt() -> None:
    """An attempt of a feature that was already settled is closed but not counted again."""
    b = make(2)
    run(b, OK, at=T0)
    b.begin(index=0, now=T0 + 5, pid=1, pid_start_time=2)
    step = b.record(
        PERMANENT,
        exit_code=1,
        consent=True,
        hint_s=None,
        settings=DEFAULT,
        now=T0 + 6,
        rand=lambda: 0,
    )
    assert step == Step()
    assert view(b) == expect(
        status="in_progress",
        current_index=1,
        completed=[0],
        history=[(0, 1, "completed", None), (0, 2, "failed", "permanent")],
    )


# --- commands -----------------------------------------------------------------------


def test_pause_and_resume() -> None:
    """pause sets paused/user; resume lifts it to pending (nothing ran) or in_progress."""
    b = make()
    b.pause(T0 + 1)
    assert view(b) == expect(status="paused", pause_reason=PAUSE_USER)
    assert not b.runnable(T0 + 1, 0) and b.state.updated_at == utc_iso(T0 + 1)
    assert b.resume(T0 + 2)
    assert view(b) == expect(status="pending")
    assert not b.resume(T0 + 3)
    run(b, OK)
    b.pause(T0 + 4, reason="bad_cwd")
    assert (b.state.status, b.state.pause_reason) == ("paused", "bad_cwd")
    assert b.resume(T0 + 5) and b.state.status == "in_progress" and b.runnable(T0 + 5, 0)


def test_pause_resume_refused_on_finished_batches() -> None:
    """pause and resume of a finished batch are bad_state errors."""
    b = make(1)
    run(b, OK)
    with _Refused("bad_state"):
        b.pause(T0)
    with _Refused("bad_state"):
        b.resume(T0)
    assert view(b) == expect(
        status="completed", current_index=1, completed=[0], history=[(0, 1, "completed", None)]
    )


def test_cancel() -> None:
    """cancel ends the batch and drops a pending retry wait; twice is refused."""
    b = make()
    run(b, TRANSIENT)
    b.cancel(T0 + 5)
    assert view(b) == expect(
        status="cancelled",
        history=[(0, 1, "failed", "transient")],
        retry_counts={"0": 1},
        **{"global": 1},
        consecutive=1,
    )
    assert b.finished and not b.runnable(T0 + 100, 0)
    with _Refused("bad_state"):
        b.cancel(T0 + 6)


def test_cancel_a_paused_batch() -> None:
    """A paused batch can be cancelled; its pause reason is cleared."""
    b = make()
    b.pause(T0)
    b.cancel(T0 + 1)
    assert view(b) == expect(status="cancelled")


def test_cancel_refused_on_a_completed_batch() -> None:
    """A completed batch cannot be cancelled."""
    b = make(1)
    run(b, OK)
    with _Refused("bad_state"):
        b.cancel(T0)
    assert b.state.status == "completed"


def test_retry_failed_requeues_failed_features_with_fresh_counts() -> None:
    """retry puts failed features back, resets their retry counts only, and reopens the batch."""
    settings = Settings(policy=RetryPolicy(jitter="none", max_per_feature=1))
    b = make(3)
    run(b, TRANSIENT, at=T0, settings=settings)  # 0: retried ...
    run(b, TRANSIENT, at=T0 + 20, settings=settings)  # ... then failed
    run(b, TRANSIENT, at=T0 + 40, settings=settings)  # 1: retried
    run(b, OK, at=T0 + 60, settings=settings)  # ... completed
    run(b, PERMANENT, at=T0 + 80, settings=settings)  # 2: failed
    assert b.state.status == "failed"
    assert b.retry_failed(T0 + 100) == [0, 2]
    assert view(b) == expect(
        status="in_progress",
        current_index=0,
        completed=[1],
        history=[
            (0, 1, "failed", "transient"),
            (0, 2, "failed", "transient"),
            (1, 1, "failed", "transient"),
            (1, 2, "completed", None),
            (2, 1, "failed", "permanent"),
        ],
        retry_counts={"1": 1},
        **{"global": 2},
        consecutive=1,
    )
    assert [b.attempt_number(i) for i in (0, 2)] == [3, 2]
    run(b, OK, at=T0 + 200)
    assert b.state.current_index == 2
    run(b, OK, at=T0 + 210)
    assert (b.state.status, b.state.completed_features) == ("completed", [1, 0, 2])


def test_retry_failed_refusals() -> None:
    """retry of a cancelled batch or of one with no failed features is bad_state."""
    b = make(1)
    run(b, OK)
    with _Refused("bad_state"):
        b.retry_failed(T0)
    c = make(2)
    run(c, PERMANENT)
    c.cancel(T0 + 5)
    with _Refused("bad_state"):
        c.retry_failed(T0 + 6)
    assert c.state.status == "cancelled" and c.state.failed_features != []


def test_skip_the_current_feature_advances() -> None:
    """Skipping the next feature records it as skipped and moves on; skipping the last ends it."""
    b = make(2)
    assert not b.skip(0, T0)
    assert view(b) == expect(current_index=1, skipped=[0])
    assert b.skip(1, T0 + 1)
    assert view(b) == expect(status="completed", current_index=2, skipped=[0, 1])


def test_skip_a_later_feature() -> None:
    """A skipped later feature is passed over when the batch gets there."""
    b = make(3)
    assert not b.skip(1, T0)
    assert view(b) == expect(skipped=[1])
    run(b, OK)
    assert b.state.current_index == 2
    assert run(b, OK, at=T0 + 5).finished
    assert view(b) == expect(
        status="completed",
        current_index=3,
        completed=[0, 2],
        skipped=[1],
        history=[(0, 1, "completed", None), (2, 1, "completed", None)],
    )


def test_skip_drops_a_pending_retry_wait() -> None:
    """Skipping a feature that waits for its retry cancels the wait."""
    b = make(2)
    run(b, TRANSIENT)
    assert b.retry.next_attempt_at is not None
    b.skip(0, T0 + 2)
    assert b.retry.next_attempt_at is None and b.state.current_index == 1


@pytest.mark.parametrize(
    ("index", "code"),
    [(-1, "bad_args"), (3, "bad_args"), (1, "bad_state")],
)
def test_skip_refusals(index: int, code: str) -> None:
    """Out-of-range index: bad_args; an already ended feature: bad_state."""
    b = make(3)
    b.skip(1, T0)
    before = view(b)
    with _Refused(code):
        b.skip(index, T0 + 1)
    assert view(b) == before


def test_skip_the_running_feature_settles_it_and_its_late_outcome_does_not_count() -> None:
    """Skipping the feature that runs records it skipped at once; the stopped attempt then
    closes as interrupted and changes nothing else (the engine stops the runner)."""
    b = make(2)
    b.begin(index=0, now=T0, pid=1, pid_start_time=2)
    assert not b.skip(0, T0 + 1)
    assert b.state.current_index == 1 and b.open_attempt() is not None
    step = b.record(
        INTERRUPTED,
        exit_code=None,
        consent=True,
        hint_s=None,
        settings=DEFAULT,
        now=T0 + 2,
        rand=lambda: 0,
    )
    assert step == Step()
    assert view(b) == expect(
        status="in_progress", current_index=1, skipped=[0], history=[(0, 1, "interrupted", None)]
    )


def test_skip_refused_on_finished_batch() -> None:
    """A finished batch's features cannot be skipped."""
    b = make(1)
    run(b, OK)
    with _Refused("bad_state"):
        b.skip(0, T0)


# --- the breaker --------------------------------------------------------------------

PAUSING = Settings(policy=RetryPolicy(jitter="none", breaker_threshold=2), breaker_pauses=True)


def test_breaker_continue_mode_fails_without_retries() -> None:
    """on_open=continue: after the breaker opens, failures are marked failed, not retried."""
    settings = Settings(policy=RetryPolicy(jitter="none", breaker_threshold=2))
    b = make(4)
    run(b, PERMANENT, at=T0, settings=settings)
    step = run(b, TRANSIENT, at=T0 + 10, settings=settings)
    assert step.breaker_opened
    run(b, TRANSIENT, at=T0 + 20, settings=settings)
    assert view(b) == expect(
        status="in_progress",
        current_index=3,
        failed=[(0, 0), (1, 0), (2, 0)],
        history=[
            (0, 1, "failed", "permanent"),
            (1, 1, "failed", "transient"),
            (2, 1, "failed", "transient"),
        ],
        consecutive=3,
        breaker=True,
    )
    assert b.runnable(T0 + 30, 0)


def test_breaker_pause_mode_pauses_after_failing_the_feature() -> None:
    """on_open=pause: the tripping feature is failed and the batch pauses with 'breaker'."""
    b = make(4)
    run(b, PERMANENT, at=T0, settings=PAUSING)
    step = run(b, TRANSIENT, at=T0 + 10, settings=PAUSING)
    assert step.breaker_opened and not step.finished
    assert [e.event_type for e in step.events] == ["circuit_breaker_triggered", "retry_decision"]
    assert view(b) == expect(
        status="paused",
        pause_reason=PAUSE_BREAKER,
        current_index=2,
        failed=[(0, 0), (1, 0)],
        history=[(0, 1, "failed", "permanent"), (1, 1, "failed", "transient")],
        consecutive=2,
        breaker=True,
    )
    assert not b.runnable(T0 + 1e6, 0)


def test_reset_breaker_resumes_a_breaker_pause() -> None:
    """reset-breaker closes the breaker, zeroes the run and lifts a breaker pause."""
    b = make(4)
    run(b, PERMANENT, at=T0, settings=PAUSING)
    run(b, PERMANENT, at=T0 + 10, settings=PAUSING)
    event = b.reset_breaker(T0 + 20)
    assert (event.event_type, event.reason) == ("circuit_breaker_reset", "manual_reset")
    assert view(b) == expect(
        status="in_progress",
        current_index=2,
        failed=[(0, 0), (1, 0)],
        history=[(0, 1, "failed", "permanent"), (1, 1, "failed", "permanent")],
    )
    assert b.runnable(T0 + 20, 0)


def test_reset_breaker_leaves_a_user_pause() -> None:
    """reset-breaker does not lift a pause the user asked for."""
    b = make(4)
    run(b, PERMANENT, at=T0)
    b.pause(T0 + 5)
    b.reset_breaker(T0 + 6)
    assert view(b) == expect(
        status="paused",
        pause_reason=PAUSE_USER,
        current_index=1,
        failed=[(0, 0)],
        history=[(0, 1, "failed", "permanent")],
    )


def test_breaker_half_opens_after_cooldown_probe_success_closes() -> None:
    """With a cooldown, a breaker-paused batch becomes runnable; a good probe closes it."""
    settings = Settings(
        policy=RetryPolicy(jitter="none", breaker_threshold=1, breaker_cooldown=60),
        breaker_pauses=True,
    )
    b = make(3)
    run(b, PERMANENT, at=T0, settings=settings)  # opens at T0 + 1
    assert b.state.status == "paused"
    assert not b.runnable(T0 + 60, 60) and b.runnable(T0 + 61, 60)
    step = run(b, OK, at=T0 + 61, settings=settings)
    assert [e.reason for e in step.events] == ["half_open_probe_succeeded"]
    assert view(b) == expect(
        status="in_progress",
        current_index=2,
        completed=[1],
        failed=[(0, 0)],
        history=[(0, 1, "failed", "permanent"), (1, 1, "completed", None)],
    )


def test_breaker_half_open_probe_failure_pauses_again() -> None:
    """A failing half-open probe re-opens the breaker and pauses the batch again."""
    settings = Settings(
        policy=RetryPolicy(jitter="none", breaker_threshold=1, breaker_cooldown=60),
        breaker_pauses=True,
    )
    b = make(3)
    run(b, PERMANENT, at=T0, settings=settings)
    step = run(b, TRANSIENT, at=T0 + 61, settings=settings)
    assert step.breaker_opened and step.events[0].reason == "half_open_probe_failed"
    assert view(b) == expect(
        status="paused",
        pause_reason=PAUSE_BREAKER,
        current_index=2,
        failed=[(0, 0), (1, 0)],
        history=[(0, 1, "failed", "permanent"), (1, 1, "failed", "transient")],
        consecutive=2,
        breaker=True,
    )
    assert b.retry.breaker_opened_at == utc_iso(T0 + 62)


def test_breaker_tripping_on_the_last_feature_finishes_not_pauses() -> None:
    """When the tripping failure was the last feature, the batch ends 'failed', not paused."""
    b = make(2)
    run(b, PERMANENT, at=T0, settings=PAUSING)
    step = run(b, PERMANENT, at=T0 + 10, settings=PAUSING)
    assert step.finished and step.breaker_opened
    assert (b.state.status, b.state.pause_reason) == ("failed", None)


# --- cost cap -----------------------------------------------------------------------


def test_cost_cap_pauses_with_cost_limit() -> None:
    """Reaching limits.max_cost_usd pauses the batch with pause_reason cost_limit."""
    settings = Settings(policy=RetryPolicy(jitter="none"), max_cost_usd=0.2)
    b = make(5)
    run(b, OK, settings=settings)
    assert (b.state.status, b.state.pause_reason) == ("in_progress", None)
    run(b, OK, at=T0 + 10, settings=settings)
    assert view(b) == expect(
        status="paused",
        pause_reason=PAUSE_COST,
        current_index=2,
        completed=[0, 1],
        history=[(0, 1, "completed", None), (1, 1, "completed", None)],
    )
    assert b.state.cost_usd == pytest.approx(0.2) and not b.runnable(T0 + 20, 0)


def test_cost_of_failed_and_interrupted_attempts_counts() -> None:
    """Every attempt's cost counts towards the cap, whatever its outcome."""
    settings = Settings(policy=RetryPolicy(jitter="none"), max_cost_usd=0.25)
    b = make(5)
    run(b, Verdict("interrupted", None, "stop", cost_usd=0.1), settings=settings)
    run(b, Verdict("failed", "transient", "x", cost_usd=0.1), at=T0 + 5, settings=settings)
    assert b.state.status == "in_progress"
    run(b, Verdict("failed", "permanent", "y", cost_usd=0.1), at=T0 + 30, settings=settings)
    assert (b.state.status, b.state.pause_reason) == ("paused", PAUSE_COST)
    assert b.state.cost_usd == pytest.approx(0.3)


def test_no_cap_and_finished_batches_are_not_paused() -> None:
    """Cap 0 means no cap; a batch that finishes over the cap ends normally."""
    b = make(2)
    run(b, Verdict("completed", cost_usd=100.0))
    assert b.state.status == "in_progress"
    c = make(1)
    run(c, OK, settings=Settings(max_cost_usd=0.05))
    assert (c.state.status, c.state.pause_reason) == ("completed", None)


def test_cost_cap_keeps_an_earlier_pause_reason() -> None:
    """A batch already paused (by the breaker) keeps that reason when the cost cap is hit."""
    settings = Settings(
        policy=RetryPolicy(jitter="none", breaker_threshold=1),
        breaker_pauses=True,
        max_cost_usd=0.1,
    )
    b = make(3)
    run(b, Verdict("failed", "permanent", "x", cost_usd=0.5), settings=settings)
    assert (b.state.status, b.state.pause_reason) == ("paused", PAUSE_BREAKER)


# --- snapshots ----------------------------------------------------------------------


def test_state_round_trips_after_every_kind_of_step() -> None:
    """After any transition the state and retry state round-trip through msgspec JSON."""
    b = make(4)
    run(b, TRANSIENT)
    run(b, INTERRUPTED, at=T0 + 20)
    b.skip(2, T0 + 25)
    run(b, OK, at=T0 + 30)
    run(b, PERMANENT, at=T0 + 40)
    for struct in (b.state, b.retry):
        assert msgspec.json.decode(msgspec.json.encode(struct), type=type(struct)) == struct
    again = Batch(b.state, b.retry)
    assert again.settled == b.settled and again.last_attempt == b.last_attempt


def test_begin_keeps_a_user_pause_made_while_the_runner_was_starting() -> None:
    """Regression: a pause that lands while the runner is being started must survive the
    attempt record; only the breaker's half-open probe takes a paused batch back."""
    b = make(2)
    b.pause(T0)
    b.begin(index=0, now=T0 + 1, pid=1, pid_start_time=2)
    assert (b.state.status, b.state.pause_reason) == ("paused", PAUSE_USER)
    assert b.open_attempt() is not None


def test_begin_is_refused_for_a_cancelled_batch() -> None:
    """A batch cancelled while its runner started cannot record an attempt (the engine
    stops that run instead)."""
    b = make(2)
    b.cancel(T0)
    with _Refused("bad_state"):
        b.begin(index=0, now=T0 + 1, pid=1, pid_start_time=2)
    assert b.state.processing_history == []


# --- the check and the evidence of an attempt (SPEC 14) ----------------------------------------


def test_an_attempt_through_its_check_keeps_what_the_agent_said() -> None:
    """begin with a git head; the agent's completed (tokens, cost, session) is kept while the
    check runs (phase verifying); the close adds the check and the git evidence."""
    from batchd.attempts import Evidence, agent_verdict
    from batchd.model import GitEvidence, VerifyResult

    b = make()
    b.begin(index=0, now=T0, pid=1, pid_start_time=2, git_head="a" * 40)
    agent = Verdict("completed", tokens=7, cost_usd=0.2, session_id="s-1")
    git = GitEvidence(head_before="a" * 40, head_after="b" * 40, commits=1, files_changed=1)
    a = b.start_verifying(agent, 0, git, T0 + 1)
    assert (a.phase, a.outcome, a.tokens, a.cost_usd, a.session_id, a.git) == (
        "verifying",
        None,
        7,
        0.2,
        "s-1",
        git,
    )
    assert agent_verdict(a) == Verdict("completed", tokens=7, cost_usd=0.2, session_id="s-1")
    check = VerifyResult(exit_code=0, duration_s=3.0, output_tail="ok")
    b.record(
        agent,
        exit_code=0,
        consent=False,
        hint_s=None,
        settings=DEFAULT,
        now=T0 + 4,
        rand=lambda: 0.0,
        evidence=Evidence(git=git, verify=check, verified=True),
    )
    assert (a.phase, a.outcome, a.verified, a.verify, a.git, a.session_id) == (
        None,
        "completed",
        True,
        check,
        git,
        "s-1",
    )
    assert b.state.completed_features == [0] and b.state.current_index == 1
