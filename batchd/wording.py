"""The wording of what the daemon says: its log lines and systemd's ``STATUS=``. Pure.

Every decision the daemon logs is worded here, with its reason and the fix
in words (features counted from 1: "feature 2/5"). Nothing here decides,
changes a batch or does IO: callers pass what happened and log the text.
"""

from __future__ import annotations

import logging

from batchd import policy
from batchd.batch import Batch
from batchd.classify import Verdict, sanitize
from batchd.live import Live
from batchd.transitions import PAUSE_BREAKER, PAUSE_COST, Settings, Step


def status_line(live: Live, slots: int, queue_pause_reason: str | None) -> str:
    """systemd's ``STATUS=``: how many run and what, or why nothing does; the runner
    profiles that wait for their usage limit either way."""
    waits = [
        f"waiting for {profile}'s usage limit until {wait.until}"
        for profile, wait in sorted(live.queue.limit_waits.items())
    ]
    if live.running:
        parts = [
            f"{slot.batch.batch_id} {slot.index + 1}/{slot.batch.state.total_features}: "
            f"{sanitize(slot.batch.state.features[slot.index], 60)}"
            for slot in live.running.values()
        ]
        n = len(parts)
        return f"{n} running ({slots} slots): " + "; ".join(parts + waits)
    if queue_pause_reason:
        return f"queue paused: {queue_pause_reason}"
    if waits:
        return "; ".join(waits)
    waiting = [b for b in live.batches.values() if b.retry.next_attempt_at and not b.finished]
    if waiting:
        b = min(waiting, key=lambda b: b.retry.next_attempt_at or "")
        return (
            f"{b.batch_id}: waiting to retry feature {b.state.current_index + 1} "
            f"until {b.retry.next_attempt_at}"
        )
    return "idle"


# --- the daemon's log: every decision, with its reason in words ---------------------------

_NOT_RETRIED = {
    policy.CONSENT_NOT_GIVEN: (
        "not retried: automatic retry is off (turn it on with 'batchctl consent --enable' "
        "or BATCH_RETRY_ENABLED=true)"
    ),
    policy.GLOBAL_LIMIT: "not retried: the batch has used all its retries (retry.max_global)",
    policy.BREAKER_OPEN: "not retried: the circuit breaker of this batch is open",
    policy.PERMANENT: "not retried: a permanent failure",
    policy.MAX_RETRIES: "not retried: the feature has used all its retries (retry.max_per_feature)",
}


def outcome_message(
    batch: Batch, index: int, attempt: int, verdict: Verdict, step: Step, settings: Settings
) -> tuple[int, str]:
    """The log level and line for a recorded outcome (and what it led to)."""
    where = f"{batch.batch_id}: feature {index + 1}/{batch.state.total_features}"
    if verdict.outcome == "completed":
        return logging.INFO, f"{where} completed (attempt {attempt})"
    if verdict.outcome == "limited":
        return logging.WARNING, (
            f"{where} attempt {attempt} stopped at the agent's usage limit ({verdict.message}); "
            "not a failure: it runs again when the limit resets"
        )
    if verdict.outcome == "interrupted":
        return logging.INFO, f"{where} attempt {attempt} {verdict.message or 'interrupted'}"
    what = (
        f"{where} attempt {attempt} {verdict.outcome} ({verdict.failure_type}): {verdict.message}"
    )
    if step.retry_delay is not None:
        line = f"{what}; retry at {batch.retry.next_attempt_at} (in {step.retry_delay:.0f} s)"
    else:
        line = f"{what}; {_NOT_RETRIED.get(step.reason or '', 'not retried')}"
    if step.breaker_opened:
        line += (
            f"; circuit breaker opened after {batch.retry.consecutive_failures} failures in a "
            "row (breaker.threshold)"
        )
    if step.paused == PAUSE_BREAKER:
        line += f"; batch paused by the breaker: 'batchctl reset-breaker {batch.batch_id}'"
    if step.paused == PAUSE_COST:
        line += "; " + cost_paused(batch, settings)
    return logging.WARNING, line


def cost_paused(batch: Batch, settings: Settings) -> str:
    return (
        f"{batch.batch_id}: paused: its cost {batch.state.cost_usd:.4f} USD reached "
        f"limits.max_cost_usd ({settings.max_cost_usd:g}); raise the limit and reload, "
        f"then 'batchctl resume {batch.batch_id}'"
    )


def cost_paused_again(batch: Batch, settings: Settings, config: object) -> str:
    """A resume that the cost cap undoes at once."""
    return (
        f"{batch.batch_id} paused again at once: its cost {batch.state.cost_usd:.4f} USD "
        f"reached limits.max_cost_usd ({settings.max_cost_usd:g}); raise the limit in "
        f"{config} and reload ('batchctl reload'), then resume it"
    )


def batch_done(batch: Batch) -> str:
    s = batch.state
    return (
        f"{batch.batch_id}: {s.status} ({len(s.completed_features)} completed, "
        f"{len(s.failed_features)} failed, {len(s.skipped_features)} skipped of "
        f"{s.total_features})"
    )


def log_incomplete(batch: Batch, index: int, attempt: int, error: str, path: object) -> str:
    return (
        f"{batch.batch_id}: the log of feature {index + 1} attempt {attempt} is incomplete "
        f"({error}; {path}); the run went on and its outcome is recorded: free space "
        "on the state dir's file system"
    )


def started(batch: Batch, index: int, where: str) -> str:
    """The log line of an attempt that started (``where``: its pid or job)."""
    s = batch.state
    return (
        f"{batch.batch_id}: feature {index + 1}/{s.total_features} attempt "
        f"{batch.attempt_number(index)} started ({where}): {sanitize(s.features[index], 200)}"
    )
