"""One batch as a small state machine: every transition of SPEC sections 5-8. Pure.

``Batch`` wraps the two on-disk records of a batch (``BatchState`` and
``RetryState``) plus derived indexes, and changes them in place through the
methods below. It never touches the disk, a clock or a process: the engine
passes ``now`` and carries out what the methods return. "What happens when a
feature fails" is ``Batch.record`` and, under it, ``policy.after_failure``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec

from batchd import policy
from batchd.classify import Verdict
from batchd.model import (
    FINISHED,
    Attempt,
    AuditEvent,
    BatchState,
    FailedFeature,
    RetryState,
    parse_iso,
    utc_iso,
)
from batchd.parse import ParsedBatch
from batchd.protocol import E_BAD_ARGS, E_BAD_STATE

PAUSE_USER = "user"
PAUSE_BREAKER = "breaker"
PAUSE_COST = "cost_limit"


class BatchError(Exception):
    """A command that does not apply to the batch as it is; ``code`` is a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The parts of the config a batch transition depends on."""

    policy: policy.RetryPolicy = field(default_factory=policy.RetryPolicy)
    breaker_pauses: bool = False
    max_cost_usd: float = 0.0


@dataclass(frozen=True)
class Step:
    """What the engine must carry out after ``Batch.record``."""

    events: tuple[AuditEvent, ...] = ()
    retry_changed: bool = False
    retry_delay: float | None = None
    breaker_opened: bool = False
    finished: bool = False


def new_batch(
    *,
    batch_id: str,
    seq: int,
    parsed: ParsedBatch,
    features_file: str,
    source_sha256: str,
    now: float,
) -> Batch:
    stamp = utc_iso(now)
    state = BatchState(
        batch_id=batch_id,
        seq=seq,
        name=parsed.name,
        features_file=features_file,
        source_sha256=source_sha256,
        total_features=len(parsed.features),
        features=list(parsed.features),
        issue_numbers=parsed.issue_numbers,
        source_type=parsed.source_type,
        cwd=parsed.cwd,
        created_at=stamp,
        updated_at=stamp,
    )
    retry = RetryState(batch_id=batch_id, created_at=stamp, updated_at=stamp)
    return Batch(state, retry)


class Batch:
    def __init__(self, state: BatchState, retry: RetryState) -> None:
        self.state = state
        self.retry = retry
        self.settled: set[int] = set(state.completed_features)
        self.settled.update(f.feature_index for f in state.failed_features)
        self.settled.update(state.skipped_features)
        # index -> (last attempt number, its outcome)
        self.last_attempt: dict[int, tuple[int, str | None]] = {}
        for a in state.processing_history:
            self.last_attempt[a.feature_index] = (a.attempt, a.outcome)

    # --- queries ---------------------------------------------------------

    @property
    def batch_id(self) -> str:
        return self.state.batch_id

    @property
    def finished(self) -> bool:
        return self.state.status in FINISHED

    def open_attempt(self) -> Attempt | None:
        """The last attempt if it has no outcome yet (running, or cut off by a crash)."""
        hist = self.state.processing_history
        if hist and hist[-1].outcome is None:
            return hist[-1]
        return None

    def runnable(self, now: float, cooldown: float) -> bool:
        """May this batch's next feature be started (retry waits aside)?"""
        s = self.state
        if s.status in FINISHED or s.current_index >= s.total_features:
            return False
        if s.status == "paused":
            # A breaker pause with a cooldown lifts itself: the half-open probe.
            return (
                s.pause_reason == PAUSE_BREAKER
                and policy.breaker_phase(self.retry, now, cooldown) == "half_open"
            )
        return True

    def wait_until(self) -> float | None:
        """When a pending retry may start (epoch seconds), or None."""
        at = self.retry.next_attempt_at
        return parse_iso(at) if at else None

    def attempt_number(self, index: int) -> int:
        """Retries so far + 1; a rerun after an interruption keeps its number."""
        last = self.last_attempt.get(index)
        if last is None:
            return 1
        number, outcome = last
        return number if outcome in (None, "interrupted") else number + 1

    @property
    def completed_count(self) -> int:
        return len(self.state.completed_features)

    @property
    def failed_count(self) -> int:
        return len(self.state.failed_features)

    # --- running ---------------------------------------------------------

    def begin(
        self, *, index: int, now: float, pid: int | None, pid_start_time: int | None
    ) -> Attempt:
        """Record that an attempt of ``index`` has started (pid known, or not yet)."""
        s = self.state
        stamp = utc_iso(now)
        if s.status == "paused":  # the breaker's half-open probe
            s.pause_reason = None
        s.status = "in_progress"
        attempt = Attempt(
            feature_index=index,
            attempt=self.attempt_number(index),
            started_at=stamp,
            pid=pid,
            pid_start_time=pid_start_time,
        )
        s.processing_history.append(attempt)
        s.updated_at = stamp
        self.last_attempt[index] = (attempt.attempt, None)
        return attempt

    def mark_interrupted(self, now: float, why: str) -> Attempt | None:
        """Close an attempt cut off by a crash or a stop: it runs again, uncharged."""
        attempt = self.open_attempt()
        if attempt is None:
            return None
        self._close(attempt, Verdict("interrupted", None, why), now, exit_code=None)
        return attempt

    def _close(self, attempt: Attempt, verdict: Verdict, now: float, exit_code: int | None) -> None:
        attempt.finished_at = utc_iso(now)
        attempt.duration_s = round(max(0.0, now - parse_iso(attempt.started_at)), 6)
        attempt.outcome = verdict.outcome
        attempt.exit_code = exit_code
        attempt.failure_type = verdict.failure_type
        attempt.error_message = verdict.message
        attempt.tokens = verdict.tokens
        attempt.cost_usd = verdict.cost_usd
        self.last_attempt[attempt.feature_index] = (attempt.attempt, verdict.outcome)
        self.state.updated_at = attempt.finished_at

    def record(
        self,
        verdict: Verdict,
        *,
        exit_code: int | None,
        consent: bool,
        hint_s: float | None,
        settings: Settings,
        now: float,
        rand: Callable[[], float],
    ) -> Step:
        """Apply the outcome of the open attempt: complete, retry, or fail the feature."""
        attempt = self.open_attempt()
        if attempt is None:
            raise BatchError(E_BAD_STATE, f"{self.batch_id}: no attempt is running")
        s = self.state
        index = attempt.feature_index
        self._close(attempt, verdict, now, exit_code)
        if verdict.tokens:
            s.context_token_estimate += verdict.tokens
        if verdict.cost_usd:
            s.cost_usd = round(s.cost_usd + verdict.cost_usd, 6)
        if verdict.outcome == "interrupted" or index in self.settled:
            return self._cost_check(Step(), settings)

        if verdict.outcome == "completed":
            s.completed_features.append(index)
            self.settled.add(index)
            new_retry, events = policy.after_success(
                self.retry, now, settings.policy.breaker_cooldown
            )
            changed = new_retry is not self.retry
            self.retry = new_retry
            return self._cost_check(
                Step(events=events, retry_changed=changed, finished=self._advance(now)), settings
            )

        message = verdict.message or verdict.outcome
        decision = policy.after_failure(
            self.retry,
            index=index,
            failure_type=verdict.failure_type or "permanent",
            message=message,
            consent=consent,
            hint_s=hint_s,
            policy=settings.policy,
            now=now,
            rand=rand,
        )
        self.retry = decision.retry_state
        finished = False
        if not decision.retry:
            s.failed_features.append(
                FailedFeature(
                    feature_index=index,
                    error_message=message,
                    timestamp=utc_iso(now),
                    retry_count=self.retry.retry_counts.get(str(index), 0),
                )
            )
            self.settled.add(index)
            finished = self._advance(now)
        if decision.breaker_opened and settings.breaker_pauses and not finished:
            s.status = "paused"
            s.pause_reason = PAUSE_BREAKER
        step = Step(
            events=decision.events,
            retry_changed=True,
            retry_delay=decision.delay_s if decision.retry else None,
            breaker_opened=decision.breaker_opened,
            finished=finished,
        )
        return self._cost_check(step, settings)

    def _cost_check(self, step: Step, settings: Settings) -> Step:
        s = self.state
        cap = settings.max_cost_usd
        if cap > 0 and s.cost_usd >= cap and not self.finished and s.status != "paused":
            s.status = "paused"
            s.pause_reason = PAUSE_COST
        return step

    def _advance(self, now: float) -> bool:
        """Move ``current_index`` to the next unsettled feature; finish the batch at the end."""
        s = self.state
        i = s.current_index
        while i < s.total_features and i in self.settled:
            i += 1
        s.current_index = i
        s.updated_at = utc_iso(now)
        if i >= s.total_features:
            s.status = "failed" if s.failed_features else "completed"
            s.pause_reason = None
            return True
        return False

    # --- commands ------------------------------------------------------------

    def _not_finished(self, verb: str) -> None:
        if self.finished:
            raise BatchError(
                E_BAD_STATE, f"{self.batch_id} is {self.state.status}; cannot {verb} it"
            )

    def pause(self, now: float, reason: str = PAUSE_USER) -> None:
        self._not_finished("pause")
        self.state.status = "paused"
        self.state.pause_reason = reason
        self.state.updated_at = utc_iso(now)

    def resume(self, now: float) -> bool:
        """Lift a pause; False when there was nothing to lift."""
        self._not_finished("resume")
        if self.state.status != "paused":
            return False
        started = bool(self.state.processing_history)
        self.state.status = "in_progress" if started else "pending"
        self.state.pause_reason = None
        self.state.updated_at = utc_iso(now)
        return True

    def cancel(self, now: float) -> None:
        self._not_finished("cancel")
        self.state.status = "cancelled"
        self.state.pause_reason = None
        self.retry = msgspec.structs.replace(self.retry, next_attempt_at=None)
        self.state.updated_at = utc_iso(now)

    def retry_failed(self, now: float) -> list[int]:
        """Put the failed features back in the queue, with their retry counts reset."""
        s = self.state
        if s.status == "cancelled":
            raise BatchError(E_BAD_STATE, f"{self.batch_id} is cancelled; submit it again")
        indices = sorted(f.feature_index for f in s.failed_features)
        if not indices:
            raise BatchError(E_BAD_STATE, f"{self.batch_id} has no failed features to retry")
        s.failed_features = []
        self.settled.difference_update(indices)
        counts = {k: v for k, v in self.retry.retry_counts.items() if int(k) not in indices}
        self.retry = msgspec.structs.replace(
            self.retry, retry_counts=counts, updated_at=utc_iso(now)
        )
        s.current_index = min(s.current_index, indices[0])
        if s.status in FINISHED:
            s.status = "in_progress"
        s.updated_at = utc_iso(now)
        return indices

    def skip(self, index: int, now: float, running: bool) -> bool:
        """Never run feature ``index``; True when the batch finished because of it."""
        s = self.state
        self._not_finished("skip a feature of")
        if not 0 <= index < s.total_features:
            raise BatchError(
                E_BAD_ARGS, f"{self.batch_id} has features 0..{s.total_features - 1}; no {index}"
            )
        if index in self.settled:
            raise BatchError(E_BAD_STATE, f"{self.batch_id}: feature {index} has already ended")
        if running:
            raise BatchError(
                E_BAD_STATE,
                f"{self.batch_id}: feature {index} is running; "
                "use 'batchctl pause --now' first, or 'batchctl cancel'",
            )
        s.skipped_features.append(index)
        self.settled.add(index)
        if index == s.current_index:
            self.retry = msgspec.structs.replace(self.retry, next_attempt_at=None)
            return self._advance(now)
        s.updated_at = utc_iso(now)
        return False

    def reset_breaker(self, now: float) -> AuditEvent:
        self.retry, event = policy.reset_breaker(self.retry, now)
        if self.state.status == "paused" and self.state.pause_reason == PAUSE_BREAKER:
            self.resume(now)
        return event

    def clear_retry_wait(self, now: float) -> None:
        """The pending retry's wait is over (it is starting now)."""
        if self.retry.next_attempt_at is not None:
            self.retry = msgspec.structs.replace(
                self.retry, next_attempt_at=None, updated_at=utc_iso(now)
            )
