"""What one batch's records say: which attempt is open, which feature may start, its
attempt numbers, each feature's state. Pure.

``BatchQueries`` wraps the two on-disk records of a batch (``BatchState`` and
``RetryState``) and the indexes derived from them (settled features, each
feature's last attempt); ``batch.Batch`` adds every change. Nothing here
changes a record, touches the disk, reads a clock or moves a status: callers
pass ``now``, and each answer is read from the records as they are.
"""

from __future__ import annotations

from collections.abc import Collection

from batchd import startable
from batchd.model import FINISHED, Attempt, BatchState, RetryState, parse_iso
from batchd.transitions import Settings

# Outcomes that are nobody's failure: the feature keeps its place and its attempt number
# (the same log goes on), no retry is charged, the breaker is untouched.
UNCHARGED = frozenset({"interrupted", "limited"})


class BatchQueries:
    """What a batch's records say (``Batch`` adds the changes)."""

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

    @property
    def batch_id(self) -> str:
        return self.state.batch_id

    @property
    def finished(self) -> bool:
        return self.state.status in FINISHED

    def open_attempt(self, index: int | None = None) -> Attempt | None:
        """The attempt without an outcome yet (running, or cut off by a crash): the last one
        of the batch, or with ``index`` the last one of that feature (a parallel batch has
        one per running feature)."""
        hist = self.state.processing_history
        if index is None:
            return hist[-1] if hist and hist[-1].outcome is None else None
        for a in reversed(hist):
            if a.feature_index == index:
                return a if a.outcome is None else None
        return None

    def open_attempts(self) -> list[Attempt]:
        """Every attempt without an outcome, oldest first (one at most, unless parallel)."""
        if not self.state.parallel:
            last = self.open_attempt()
            return [last] if last is not None else []
        latest = {a.feature_index: a for a in self.state.processing_history}
        return sorted((a for a in latest.values() if a.outcome is None), key=lambda a: a.started_at)

    def runnable(self, now: float, cooldown: float) -> bool:
        """May this batch start a feature now (retry waits aside)?"""
        return startable.runnable(self.state, self.retry, now, cooldown)

    def may_start(self, index: int, now: float, cooldown: float) -> bool:
        """May feature ``index`` (its slot taken) start now: the batch runnable and the
        feature still the next (sequential) or still unsettled (parallel)?"""
        if self.state.parallel:
            return index not in self.settled and self.runnable(now, cooldown)
        return self.state.current_index == index and self.runnable(now, cooldown)

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
        return number if outcome is None or outcome in UNCHARGED else number + 1

    def feature_states(self, running: Collection[int] = ()) -> list[str]:
        """Per feature: completed, failed, skipped, running, cancelled (never to run) or pending."""
        s = self.state
        done = set(s.completed_features)
        failed = {f.feature_index for f in s.failed_features}
        skipped = set(s.skipped_features)
        out = []
        for i in range(s.total_features):
            if i in done:
                out.append("completed")
            elif i in failed:
                out.append("failed")
            elif i in skipped:
                out.append("skipped")
            elif i in running:
                out.append("running")
            else:
                out.append("cancelled" if s.status == "cancelled" else "pending")
        return out

    def over_cost_cap(self, settings: Settings) -> bool:
        cap = settings.max_cost_usd
        return cap > 0 and self.state.cost_usd >= cap
