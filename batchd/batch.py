"""One batch as a small state machine: every transition of SPEC sections 5-8. Pure.

``Batch`` changes the two on-disk records of a batch (``BatchState`` and
``RetryState``) in place through the methods below; what the records say (the
open attempt, attempt numbers, whether a feature may start) is read by its base,
``batchquery.BatchQueries``. It never touches the disk, a clock or a process: the engine
passes ``now`` and carries out what the methods return. "What happens when a
feature fails" is ``Batch.record`` and, under it, ``policy.after_failure``.

Every change of ``status`` goes through ``transitions.move`` and its one table
``TRANSITIONS``; which event happens is decided here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import msgspec

from batchd import attempts, policy
from batchd.attempts import Evidence
from batchd.batchquery import UNCHARGED, BatchQueries
from batchd.classify import Verdict
from batchd.errors import BadArgs, BadState
from batchd.model import (
    Attempt,
    AuditEvent,
    BatchState,
    FailedFeature,
    GitEvidence,
    RetryState,
    utc_iso,
)
from batchd.parse import ParsedBatch
from batchd.transitions import (
    OPEN,
    PAUSE_BREAKER,
    PAUSE_COST,
    PAUSE_USER,
    Settings,
    Step,
    move,
    settings_from,
)

__all__ = [
    "PAUSE_BREAKER",
    "PAUSE_COST",
    "PAUSE_USER",
    "Batch",
    "Evidence",
    "new_batch",
    "settings_from",
]


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
        runner=parsed.options.runner,
        verify=parsed.options.verify,
        isolation=parsed.options.isolation,
        parallel=parsed.options.parallel,
    )
    retry = RetryState(batch_id=batch_id, created_at=stamp, updated_at=stamp)
    return Batch(state, retry)


class Batch(BatchQueries):
    """A batch and every change of it: what a command or an outcome does to its records."""

    # --- status changes: the table -------------------------------------

    def _move(self, event: str, now: float, reason: str | None = None) -> None:
        move(self.state, event, now, reason)

    # --- running ---------------------------------------------------------

    def begin(
        self,
        *,
        index: int,
        now: float,
        pid: int | None,
        pid_start_time: int | None,
        job_id: str | None = None,
        run_id: str | None = None,
        git_head: str | None = None,
        where: tuple[str, str] | None = None,
    ) -> Attempt:
        """Record that an attempt of ``index`` has started (``git_head``: the commit its work
        tree was at; ``where``: its worktree and branch, SPEC 15); a pending retry wait is
        over (in a parallel batch, once its time has come: other features start meanwhile).

        A batch paused meanwhile (by the user, while the runner was being started)
        stays paused; only the breaker's half-open probe takes a paused batch back.
        """
        s = self.state
        if s.status != "paused" or s.pause_reason == PAUSE_BREAKER:
            self._move("begin", now)
        wait = self.wait_until()
        if not s.parallel or (wait is not None and wait <= now):
            self.clear_retry_wait(now)
        attempt = attempts.opened(
            index=index,
            number=self.attempt_number(index),
            now=now,
            pid=pid,
            pid_start_time=pid_start_time,
            job_id=job_id,
            run_id=run_id,
            git_head=git_head,
            where=where,
        )
        self.state.processing_history.append(attempt)
        self.last_attempt[index] = (attempt.attempt, None)
        return attempt

    def start_verifying(
        self,
        verdict: Verdict,
        exit_code: int | None,
        git: GitEvidence | None,
        now: float,
        index: int | None = None,
    ) -> Attempt:
        """The agent said completed: its check starts (recorded, so a restart runs the check
        again, not the agent)."""
        attempt = self._running(index)
        attempts.verifying(attempt, verdict, exit_code, git)
        self.state.updated_at = utc_iso(now)
        return attempt

    def start_merging(
        self, index: int, verdict: Verdict, exit_code: int | None, evidence: Evidence, now: float
    ) -> Attempt:
        """A parallel feature completed and passed its check: its merge into the batch
        branch starts (recorded, so a restart merges again, never runs the agent again)."""
        attempt = self._running(index)
        attempts.merging(attempt, verdict, exit_code, evidence)
        self.state.updated_at = utc_iso(now)
        return attempt

    def _running(self, index: int | None) -> Attempt:
        attempt = self.open_attempt(index)
        if attempt is None:
            raise BadState(f"{self.batch_id}: no attempt is running")
        return attempt

    def mark_interrupted(self, now: float, why: str, index: int | None = None) -> Attempt | None:
        """Close an attempt cut off by a crash or a stop: it runs again, uncharged."""
        attempt = self.open_attempt(index)
        if attempt is None:
            return None
        self._close(attempt, Verdict("interrupted", None, why), now, exit_code=None)
        return attempt

    def _close(
        self,
        attempt: Attempt,
        verdict: Verdict,
        now: float,
        exit_code: int | None,
        evidence: Evidence | None = None,
    ) -> None:
        attempts.closed(attempt, verdict, now, exit_code, evidence)
        self.last_attempt[attempt.feature_index] = (attempt.attempt, verdict.outcome)
        self.state.updated_at = utc_iso(now)

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
        evidence: Evidence | None = None,
        index: int | None = None,
    ) -> Step:
        """Apply the outcome of the open attempt (of feature ``index``): complete, retry, or
        fail the feature."""
        attempt = self._running(index)
        s = self.state
        index = attempt.feature_index
        self._close(attempt, verdict, now, exit_code, evidence)
        if verdict.tokens:
            s.context_token_estimate += verdict.tokens
        if verdict.cost_usd:
            s.cost_usd = round(s.cost_usd + verdict.cost_usd, 6)
        if verdict.outcome in UNCHARGED or index in self.settled:
            step = Step()
        elif verdict.outcome == "completed":
            step = self._completed(index, settings, now)
        else:
            step = self._failed(index, verdict, consent, hint_s, settings, now, rand)
        if self.enforce_cost_cap(settings, now):
            step = dataclasses.replace(step, paused=PAUSE_COST)
        return step

    def _completed(self, index: int, settings: Settings, now: float) -> Step:
        self.state.completed_features.append(index)
        self.settled.add(index)
        self.retry, events = policy.after_success(self.retry, now, settings.policy.breaker_cooldown)
        return Step(events=events, finished=self._advance(now))

    def _failed(
        self,
        index: int,
        verdict: Verdict,
        consent: bool,
        hint_s: float | None,
        settings: Settings,
        now: float,
        rand: Callable[[], float],
    ) -> Step:
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
            self.state.failed_features.append(
                FailedFeature(
                    feature_index=index,
                    error_message=message,
                    timestamp=utc_iso(now),
                    retry_count=self.retry.retry_counts.get(str(index), 0),
                )
            )
            self.settled.add(index)
            finished = self._advance(now)
        paused = None
        if decision.breaker_opened and settings.breaker_pauses and not finished:
            self._move("pause", now, PAUSE_BREAKER)
            paused = PAUSE_BREAKER
        return Step(
            events=decision.events,
            retry_delay=decision.delay_s if decision.retry else None,
            breaker_opened=decision.breaker_opened,
            finished=finished,
            paused=paused,
            reason=decision.reason,
        )

    def enforce_cost_cap(self, settings: Settings, now: float) -> bool:
        """Pause the batch (``cost_limit``) when its cost reached the cap; True if it did."""
        s = self.state
        if self.over_cost_cap(settings) and not self.finished and s.status != "paused":
            self._move("pause", now, PAUSE_COST)
            return True
        return False

    def _advance(self, now: float) -> bool:
        """Move ``current_index`` to the next unsettled feature; finish the batch at the end."""
        s = self.state
        i = s.current_index
        while i < s.total_features and i in self.settled:
            i += 1
        s.current_index = i
        s.updated_at = utc_iso(now)
        if i >= s.total_features:
            self._move("fail" if s.failed_features else "complete", now)
            return True
        return False

    # --- commands ------------------------------------------------------------

    def pause(self, now: float, reason: str = PAUSE_USER) -> None:
        self._move("pause", now, reason)

    def resume(self, now: float) -> bool:
        """Lift a pause; False when there was nothing to lift."""
        s = self.state
        if s.status in OPEN and s.status != "paused":
            return False
        self._move("resume" if s.processing_history else "resume_unstarted", now)
        return True

    def cancel(self, now: float) -> None:
        self._move("cancel", now)
        self.clear_retry_wait(now)

    def retry_failed(self, now: float) -> list[int]:
        """Put the failed features back in the queue, with their retry counts reset."""
        s = self.state
        if s.status == "cancelled":
            raise BadState(f"{self.batch_id} is cancelled; submit it again")
        indices = sorted(f.feature_index for f in s.failed_features)
        if not indices:
            raise BadState(f"{self.batch_id} has no failed features to retry")
        self._move("requeue", now)
        s.failed_features = []
        self.settled.difference_update(indices)
        counts = {k: v for k, v in self.retry.retry_counts.items() if int(k) not in indices}
        self.retry = msgspec.structs.replace(
            self.retry, retry_counts=counts, updated_at=utc_iso(now)
        )
        s.current_index = min(s.current_index, indices[0])
        return indices

    def skip(self, index: int, now: float) -> bool:
        """Never run feature ``index`` (a running one is stopped by the engine and its
        outcome no longer counts); True when the batch finished because of it."""
        s = self.state
        if s.status not in OPEN:
            raise BadState(f"{self.batch_id} is {s.status}; cannot skip a feature of it")
        if not 0 <= index < s.total_features:
            raise BadArgs(
                f"{self.batch_id} has {s.total_features} features "
                f"(index 0 to {s.total_features - 1}); there is no index {index}",
            )
        if index in self.settled:
            raise BadState(
                f"{self.batch_id}: feature {index + 1} (index {index}) has already ended",
            )
        s.skipped_features.append(index)
        self.settled.add(index)
        s.updated_at = utc_iso(now)
        if index == s.current_index:
            self.clear_retry_wait(now)
            return self._advance(now)
        return False

    def reset_breaker(self, now: float) -> AuditEvent:
        self.retry, event = policy.reset_breaker(self.retry, now)
        if self.state.status == "paused" and self.state.pause_reason == PAUSE_BREAKER:
            self.resume(now)
        return event

    def clear_retry_wait(self, now: float) -> None:
        """The pending retry's wait is over (it is starting now, or will never start)."""
        if self.retry.next_attempt_at is not None:
            self.retry = msgspec.structs.replace(
                self.retry, next_attempt_at=None, updated_at=utc_iso(now)
            )
