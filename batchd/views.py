"""What the daemon shows: status, list, show and the report (SPEC 7, 8, 14). Read only.

Views read the live state through ``Reader`` (the engine implements it) and
return the shapes of ``shapes``. Nothing here changes a batch, writes a file,
wakes anyone or does IO per request (the pid, the cwd keys and the consent
of each cwd are cached by the reader).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Protocol

import msgspec

from batchd import __version__, limitwait, report, reportshapes, shapes
from batchd.batch import Batch
from batchd.clock import Clock
from batchd.config import Config
from batchd.live import Live, Slot
from batchd.model import parse_iso
from batchd.store import Problem
from batchd.worktreerecord import place

RECENT_FINISHED = 20  # finished batches in status; ``list`` has them all


class Reader(Protocol):
    """The read-only surface views are given."""

    live: Live
    clock: Clock
    backend: str
    started: float
    pid: int

    @property
    def cfg(self) -> Config: ...

    @property
    def engine_name(self) -> str: ...

    @property
    def queue_pause_reason(self) -> str | None: ...

    def global_consent(self) -> bool: ...

    def consent_shown(self, batch: Batch) -> bool: ...

    def cwd_key(self, batch: Batch) -> str: ...

    def log_path(self, batch: Batch, index: int, attempt: int) -> Path: ...


def status(engine: Reader) -> shapes.Status:
    live = engine.live
    now = engine.clock.now()
    unfinished = [b for b in live.batches.values() if not b.finished]
    finished = [b for b in live.batches.values() if b.finished]
    recent = sorted(finished, key=lambda b: b.state.updated_at)[-RECENT_FINISHED:]
    shown = sorted(unfinished + recent, key=lambda b: b.state.seq)
    mean = _mean_duration(shown)
    running = running_items(engine)
    waits = [b.retry.next_attempt_at for b in unfinished if b.retry.next_attempt_at]
    p = engine.cfg.paths
    return {
        "daemon": {
            "pid": engine.pid,
            "version": __version__,
            "backend": engine.backend,
            "engine": engine.engine_name,
            "uptime_s": round(now - engine.started, 3),
        },
        "queue_paused": engine.queue_pause_reason is not None,
        "pause_reason": engine.queue_pause_reason,
        "problems": [problem_item(p) for p in live.problems],
        "retry_enabled": engine.global_consent(),
        "slots": engine.cfg.queue.slots,
        "running": running,
        "current": running[0] if running else None,
        "next_retry_at": min(waits) if waits else None,
        "finished_total": len(finished),
        "batches": [batch_item(engine, b, mean) for b in shown],
        "total_cost_usd": round(sum(b.state.cost_usd for b in live.batches.values()), 6),
        "paths": {
            "config": str(p.config),
            "spool_dir": str(p.spool_dir),
            "state_dir": str(p.state_dir),
            "socket": str(p.socket),
        },
        "limit_waits": limit_waits(engine),
        "rejected": engine.live.spool_report.rejected,
        "rejected_total": engine.live.spool_report.rejected_total,
    }


def problem_item(p: Problem) -> shapes.ProblemItem:
    return {"kind": p.kind, "message": p.message, "batch_id": p.batch_id}


def list_batches(engine: Reader) -> shapes.BatchList:
    batches = list(engine.live.batches.values())
    mean = _mean_duration(batches)
    return {"batches": [batch_item(engine, b, mean) for b in batches]}


def show(engine: Reader, batch: Batch) -> shapes.Show:
    slots = engine.live.slots_of(batch.batch_id)
    running = [s.index for s in slots if batch.open_attempt(s.index) is not None]
    items = [running_item(engine, slot) for slot in slots]
    return {
        "batch": batch_item(engine, batch, _mean_duration(list(engine.live.batches.values()))),
        "feature_states": batch.feature_states(running),
        "running": items[0] if items else None,
        "running_all": items,
        "state": msgspec.to_builtins(batch.state),
        "retry": msgspec.to_builtins(batch.retry),
    }


def report_of(
    engine: Reader, batch_ids: list[str] | None = None, since_s: float = report.DEFAULT_SINCE_S
) -> reportshapes.Report:
    """The morning report (SPEC 14) of the live state as of now: the named batches, else
    every unfinished one and those finished in the last ``since_s`` seconds."""
    batches = engine.live.batches

    def log_path(batch_id: str, index: int, attempt: int) -> Path:
        return engine.log_path(batches[batch_id], index, attempt)

    return report.build(
        batches.values(),
        queue=engine.live.queue,
        log_path=log_path,
        now=engine.clock.now(),
        batch_ids=batch_ids,
        since_s=since_s,
    )


def batch_item(engine: Reader, batch: Batch, global_mean: float | None) -> shapes.BatchItem:
    s, r, git = batch.state, batch.retry, batch.state.git
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
        "retry_enabled": engine.consent_shown(batch),
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
        "runner": s.runner,
        "limit_until": _limit_until(engine, batch),
        "isolation": s.isolation,
        "parallel": s.parallel,
        "branch": git.branch if git is not None else None,
        "worktree": git.worktree if git is not None and git.step != "removed" else None,
        "base_forward": git.forward if git is not None else None,
    }


def _limit_until(engine: Reader, batch: Batch) -> str | None:
    wait = engine.live.queue.limit_waits.get(batch.state.runner)
    return wait.until if wait is not None and not batch.finished else None


def session_of(batch: Batch, index: int, attempt: int) -> str | None:
    """The agent's session of that attempt (its last run that named one), for
    ``claude --resume ID`` / ``codex resume ID``."""
    for a in reversed(batch.state.processing_history):
        if a.feature_index == index and a.attempt == attempt and a.session_id:
            return a.session_id
    return None


def limit_waits(engine: Reader) -> list[shapes.LimitWaitItem]:
    """Every profile that waits for its agent's usage limit, in words too."""
    now = engine.clock.now()
    items: list[shapes.LimitWaitItem] = []
    for profile, wait in sorted(engine.live.queue.limit_waits.items()):
        local = datetime.fromtimestamp(parse_iso(wait.until)).astimezone()
        shown = local.strftime("%Y-%m-%d %H:%M %Z")
        items.append(
            {
                "runner": profile,
                "until": wait.until,
                "since": wait.since,
                "message": wait.message,
                "in_words": limitwait.in_words(profile, wait, now, shown),
            }
        )
    return items


def _mean_duration(batches: list[Batch]) -> float | None:
    """Mean duration of the attempts that ran to an end (not interrupted ones)."""
    total, n = 0.0, 0
    for b in batches:
        for a in b.state.processing_history:
            if a.outcome in ("completed", "failed", "timed_out") and a.duration_s is not None:
                total += a.duration_s
                n += 1
    return total / n if n else None


def running_items(engine: Reader) -> list[shapes.RunningItem]:
    """Every running feature, in the order they started."""
    return [running_item(engine, slot) for slot in engine.live.running.values()]


def running_item(engine: Reader, slot: Slot) -> shapes.RunningItem:
    batch = slot.batch
    s = batch.state
    attempt = batch.open_attempt(slot.index)
    run = slot.run
    if attempt is None and run is not None:
        # Its run has ended and is judged: the check, the merge or the hooks still hold
        # the slot. The attempt is the one that ran, not the next one.
        mine = (a for a in reversed(s.processing_history) if a.feature_index == slot.index)
        attempt = next(mine, None)
    number = attempt.attempt if attempt is not None else batch.attempt_number(slot.index)
    where = place(s, slot.index, number)
    return {
        "batch_id": batch.batch_id,
        "seq": s.seq,
        "name": s.name,
        "feature_index": slot.index,
        "total_features": s.total_features,
        "feature": s.features[slot.index],
        "attempt": number,
        "started_at": attempt.started_at if attempt is not None else None,
        "pid": attempt.pid if attempt is not None else None,
        "job_id": attempt.job_id if attempt is not None else None,
        "job_state": run.describe() if run is not None else None,
        "log_path": str(slot.spec.log_path),
        "worktree": where.worktree if where is not None else None,
        "branch": where.branch if where is not None else None,
    }
