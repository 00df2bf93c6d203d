"""What the daemon shows: status, list, show, systemd's STATUS= line, and log wording.

Read only: nothing here changes a batch, writes a file or wakes anyone. The
shapes returned are those of ``shapes`` (SPEC 7 and 8). Human text counts
features from 1 ("feature 2/5"); indices in the data stay 0-based.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import msgspec

from batchd import __version__, policy, shapes
from batchd.batch import PAUSE_BREAKER, PAUSE_COST, Batch, Settings, Step
from batchd.classify import Verdict, sanitize
from batchd.store import Problem

if TYPE_CHECKING:
    from batchd.engine import Engine, Slot

RECENT_FINISHED = 20  # finished batches in status; ``list`` has them all


def status(engine: Engine) -> shapes.Status:
    now = engine.clock.now()
    unfinished = [b for b in engine.batches.values() if not b.finished]
    finished = [b for b in engine.batches.values() if b.finished]
    recent = sorted(finished, key=lambda b: b.state.updated_at)[-RECENT_FINISHED:]
    shown = sorted(unfinished + recent, key=lambda b: b.state.seq)
    mean = _mean_duration(shown)
    running = running_items(engine)
    waits = [b.retry.next_attempt_at for b in unfinished if b.retry.next_attempt_at]
    p = engine.cfg.paths
    return {
        "daemon": {
            "pid": os.getpid(),
            "version": __version__,
            "backend": engine.backend,
            "engine": engine.runner.name,
            "uptime_s": round(now - engine.started, 3),
        },
        "queue_paused": engine.queue_pause_reason is not None,
        "pause_reason": engine.queue_pause_reason,
        "problems": [problem_item(p) for p in engine.problems],
        "retry_enabled": engine.global_consent(),
        "slots": engine.slots,
        "running": running,
        "current": running[0] if running else None,
        "next_retry_at": min(waits) if waits else None,
        "finished_total": len(finished),
        "batches": [batch_item(engine, b, mean) for b in shown],
        "total_cost_usd": round(sum(b.state.cost_usd for b in engine.batches.values()), 6),
        "paths": {
            "config": str(p.config),
            "spool_dir": str(p.spool_dir),
            "state_dir": str(p.state_dir),
            "socket": str(p.socket),
        },
        "rejected": engine.spool_report.rejected,
        "rejected_total": engine.spool_report.rejected_total,
    }


def problem_item(p: Problem) -> shapes.ProblemItem:
    return {"kind": p.kind, "message": p.message, "batch_id": p.batch_id}


def list_batches(engine: Engine) -> shapes.BatchList:
    batches = list(engine.batches.values())
    mean = _mean_duration(batches)
    return {"batches": [batch_item(engine, b, mean) for b in batches]}


def show(engine: Engine, batch: Batch) -> shapes.Show:
    slot = engine.running.get(batch.batch_id)
    running = slot.index if slot is not None and batch.open_attempt() is not None else None
    return {
        "batch": batch_item(engine, batch, _mean_duration(list(engine.batches.values()))),
        "feature_states": batch.feature_states(running),
        "running": running_item(engine, slot) if slot is not None else None,
        "state": msgspec.to_builtins(batch.state),
        "retry": msgspec.to_builtins(batch.retry),
    }


def batch_item(engine: Engine, batch: Batch, global_mean: float | None) -> shapes.BatchItem:
    s, r = batch.state, batch.retry
    left = s.total_features - len(batch.settled)
    mean = _mean_duration([batch]) if s.processing_history else None
    mean = mean if mean is not None else global_mean
    eta = 0.0 if batch.finished else (round(mean * left, 3) if mean is not None else None)
    return {
        "batch_id": s.batch_id,
        "name": s.name,
        "seq": s.seq,
        "status": s.status,
        "pause_reason": s.pause_reason,
        "total_features": s.total_features,
        "completed": len(s.completed_features),
        "failed": len(s.failed_features),
        "skipped": len(s.skipped_features),
        "current_index": s.current_index,
        "retry_enabled": engine.consent_for(batch),
        "circuit_breaker_open": r.circuit_breaker_open,
        "consecutive_failures": r.consecutive_failures,
        "next_attempt_at": r.next_attempt_at,
        "cost_usd": s.cost_usd,
        "eta_s": eta,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "cwd": s.cwd,
        "workdir": engine.cwd_key(batch),
        "source_type": s.source_type,
    }


def _mean_duration(batches: list[Batch]) -> float | None:
    """Mean duration of the attempts that ran to an end (not interrupted ones)."""
    total, n = 0.0, 0
    for b in batches:
        for a in b.state.processing_history:
            if a.outcome in ("completed", "failed", "timed_out") and a.duration_s is not None:
                total += a.duration_s
                n += 1
    return total / n if n else None


def running_items(engine: Engine) -> list[shapes.RunningItem]:
    """Every running feature, in the order they started."""
    return [running_item(engine, slot) for slot in engine.running.values()]


def running_item(engine: Engine, slot: Slot) -> shapes.RunningItem:
    batch = slot.batch
    s = batch.state
    attempt = batch.open_attempt()
    run = slot.run
    return {
        "batch_id": batch.batch_id,
        "seq": s.seq,
        "name": s.name,
        "feature_index": slot.index,
        "total_features": s.total_features,
        "feature": s.features[slot.index],
        "attempt": batch.attempt_number(slot.index),
        "started_at": attempt.started_at if attempt is not None else None,
        "pid": attempt.pid if attempt is not None else None,
        "job_id": attempt.job_id if attempt is not None else None,
        "job_state": run.describe() if run is not None else None,
        "log_path": str(slot.spec.log_path),
    }


def status_line(engine: Engine) -> str:
    """systemd's ``STATUS=``: how many run and what, or why nothing does."""
    if engine.running:
        parts = [
            f"{slot.batch.batch_id} {slot.index + 1}/{slot.batch.state.total_features}: "
            f"{sanitize(slot.batch.state.features[slot.index], 60)}"
            for slot in engine.running.values()
        ]
        n = len(parts)
        return f"{n} running ({engine.slots} slots): " + "; ".join(parts)
    if engine.queue_pause_reason:
        return f"queue paused: {engine.queue_pause_reason}"
    waiting = [b for b in engine.batches.values() if b.retry.next_attempt_at and not b.finished]
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
