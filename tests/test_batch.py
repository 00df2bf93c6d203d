"""The batch state machine (batch.py): every transition, whole state checked. Pure."""

from __future__ import annotations

import msgspec
import pytest

from batchd.batch import PAUSE_BREAKER, PAUSE_COST, Batch, BatchError, Settings, new_batch
from batchd.classify import Verdict
from batchd.parse import ParsedBatch
from batchd.policy import RetryPolicy

T0 = 1_800_000_000.0
OK = Verdict("completed", tokens=10, cost_usd=0.1)
TRANSIENT = Verdict("failed", "transient", "ConnectionError")
PERMANENT = Verdict("failed", "permanent", "TypeError")


def make(n: int = 3) -> Batch:
    return new_batch(
        batch_id="batch-20261124-050653-123456",
        seq=1,
        parsed=ParsedBatch(features=[f"f{i}" for i in range(n)], name="b"),
        features_file="b.txt",
        source_sha256="0" * 64,
        now=T0,
    )


def run(
    b: Batch,
    verdict: Verdict,
    *,
    consent: bool = True,
    settings: Settings | None = None,
    now: float = T0,
):  # type: ignore[no-untyped-def]
    b.begin(index=b.state.current_index, now=now, pid=1, pid_start_time=2)
    return b.record(
        verdict,
        exit_code=0,
        consent=consent,
        hint_s=None,
        settings=settings or Settings(),
        now=now + 1,
        rand=lambda: 0.0,
    )


def test_happy_path_completes() -> None:
    """Three successes: completed, history of three, tokens and cost summed."""
    b = make()
    for _ in range(3):
        step = run(b, OK)
    s = b.state
    assert step.finished and s.status == "completed" and s.current_index == 3
    assert s.completed_features == [0, 1, 2] and s.failed_features == []
    assert [a.outcome for a in s.processing_history] == ["completed"] * 3
    assert s.context_token_estimate == 30 and s.cost_usd == pytest.approx(0.3)


def test_retry_then_fail_then_end_failed() -> None:
    """A transient failure is retried at the same index with attempt 2; a permanent one fails."""
    b = make(2)
    step = run(b, TRANSIENT)
    assert step.retry_delay is not None and b.state.current_index == 0
    assert b.attempt_number(0) == 2 and b.retry.retry_counts == {"0": 1}
    run(b, OK)
    step = run(b, PERMANENT)
    assert step.finished and b.state.status == "failed"
    assert [f.feature_index for f in b.state.failed_features] == [1]


def test_interrupted_keeps_attempt_number_and_is_not_charged() -> None:
    """An interrupted attempt reruns with the same number; counters do not move."""
    b = make(1)
    b.begin(index=0, now=T0, pid=1, pid_start_time=2)
    b.mark_interrupted(T0 + 1, "stop")
    assert b.attempt_number(0) == 1 and b.retry.consecutive_failures == 0
    assert b.state.processing_history[0].outcome == "interrupted"
    assert run(b, OK).finished


def test_breaker_pause_mode() -> None:
    """on_open=pause: the tripping failure is recorded and the batch pauses with 'breaker'."""
    settings = Settings(policy=RetryPolicy(breaker_threshold=2), breaker_pauses=True)
    b = make(4)
    run(b, PERMANENT, settings=settings)
    step = run(b, PERMANENT, settings=settings)
    assert (
        step.breaker_opened and b.state.status == "paused" and b.state.pause_reason == PAUSE_BREAKER
    )
    assert not b.runnable(T0 + 10, 0)
    b.reset_breaker(T0 + 20)
    assert b.state.status == "in_progress" and not b.retry.circuit_breaker_open


def test_cost_cap_pauses() -> None:
    """Reaching max_cost_usd pauses the batch with cost_limit."""
    b = make(5)
    settings = Settings(max_cost_usd=0.2)
    run(b, OK, settings=settings)
    assert b.state.status == "in_progress"
    run(b, OK, settings=settings)
    assert (b.state.status, b.state.pause_reason) == ("paused", PAUSE_COST)


def test_commands_and_their_refusals() -> None:
    """pause/resume/cancel/retry/skip apply or refuse with the right error code."""
    b = make(3)
    b.pause(T0)
    assert b.state.status == "paused" and b.resume(T0) and not b.resume(T0)
    with pytest.raises(BatchError) as e:
        b.skip(9, T0, running=False)
    assert e.value.code == "bad_args"
    with pytest.raises(BatchError) as e:
        b.skip(0, T0, running=True)
    assert e.value.code == "bad_state"
    assert not b.skip(0, T0, running=False) and b.state.current_index == 1
    run(b, PERMANENT, consent=False)
    run(b, OK)
    assert b.state.status == "failed" and b.state.skipped_features == [0]
    assert (
        b.retry_failed(T0) == [1] and b.state.status == "in_progress" and b.state.current_index == 1
    )
    run(b, OK)
    assert b.state.status == "completed"
    with pytest.raises(BatchError) as e:
        b.cancel(T0)
    assert e.value.code == "bad_state"
    c = make(2)
    c.cancel(T0)
    assert c.state.status == "cancelled" and not c.runnable(T0, 0)
    with pytest.raises(BatchError):
        c.retry_failed(T0)


def test_state_is_a_plain_struct_snapshot() -> None:
    """The state round-trips through msgspec after any transition."""
    b = make(2)
    run(b, TRANSIENT)
    again = msgspec.json.decode(msgspec.json.encode(b.state), type=type(b.state))
    assert again == b.state
