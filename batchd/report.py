"""The morning report of SPEC 14, built from values. Pure.

``build`` takes the batches (their ``BatchState`` and ``RetryState``: ``batch.Batch``
objects or ``Records`` pairs), the queue's ``DaemonState``, a function giving the
log path of an attempt, and ``now``; it returns a ``reportshapes.Report``: what needs a
person first (failed features, pauses with the command that lifts them, usage-limit
waits, open breakers: ``attention`` decides those), then every feature of every batch,
then totals. ``reportrender`` turns that value into text or JSON, ``reportmd`` into
Markdown.

Figures an attempt never recorded (an entry of an older version) stay None and
are shown as "–". Costs are rounded per feature to ``COST_DIGITS`` decimals and
every total is the sum of those rounded figures, so the columns add up exactly.
Git figures of a feature are summed over its attempts: an uncommitted change that
one attempt leaves and the next keeps is counted by both.

Never here: a file, a clock, a socket, or a change to the states it is given.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import NamedTuple, Protocol, TypeVar

from batchd import reportshapes
from batchd.attention import needs_attention
from batchd.model import (
    FINISHED,
    Attempt,
    BatchState,
    DaemonState,
    RetryState,
    parse_iso,
    utc_iso,
)

DEFAULT_SINCE_S = 24 * 3600.0
COST_DIGITS = 4
_COST_UNIT = 10**COST_DIGITS
_RUNNING = frozenset({"running", "verifying", "merging"})
_PENDING = frozenset({"pending", "retry_wait", "limited"})

LogPath = Callable[[str, int, int], "str | PathLike[str]"]  # (batch id, index, attempt)


class BatchRecords(Protocol):
    """What the report reads of a batch; ``batch.Batch`` is one."""

    @property
    def state(self) -> BatchState: ...

    @property
    def retry(self) -> RetryState: ...


class Records(NamedTuple):
    state: BatchState
    retry: RetryState


B = TypeVar("B", bound=BatchRecords)


def select(
    batches: Iterable[B],
    now: float,
    *,
    batch_ids: Collection[str] | None = None,
    since_s: float = DEFAULT_SINCE_S,
) -> list[B]:
    """The named batches, else every unfinished one and those finished since ``now - since_s``;
    in arrival order (``seq``)."""
    if batch_ids:
        chosen = [b for b in batches if b.state.batch_id in batch_ids]
    else:
        cutoff = now - since_s
        chosen = [
            b
            for b in batches
            if b.state.status not in FINISHED or parse_iso(b.state.updated_at) >= cutoff
        ]
    return sorted(chosen, key=lambda b: b.state.seq)


def build(
    batches: Iterable[BatchRecords],
    *,
    queue: DaemonState,
    log_path: LogPath,
    now: float,
    batch_ids: Collection[str] | None = None,
    since_s: float = DEFAULT_SINCE_S,
) -> reportshapes.Report:
    """The report of the selected batches (``select``) as of ``now``."""
    chosen = select(batches, now, batch_ids=batch_ids, since_s=since_s)
    views = [_batch(b, log_path, now) for b in chosen]
    total = _Sum()
    for v in views:
        for f in v.item["features"]:
            total.add(f)
        total.span(v.sums.start, v.sums.end)
    return {
        "generated_at": utc_iso(now),
        "since": None if batch_ids else utc_iso(now - since_s),
        "needs_attention": needs_attention([(v.item, v.retry) for v in views], queue),
        "batches": [v.item for v in views],
        "totals": total.counts(),
    }


# --- one batch ---------------------------------------------------------------------------


@dataclass
class _Sum:
    """Figures added up; costs in integer units of 10**-COST_DIGITS dollars, so sums are exact."""

    tally: Counter[str] = field(default_factory=Counter)  # features by category
    start: float | None = None
    end: float | None = None
    agent_s: float = 0.0
    cost_units: int = 0
    tokens: int = 0
    tokens_estimated: bool = False
    commits: int = 0
    insertions: int = 0
    deletions: int = 0

    def add(self, f: reportshapes.ReportFeature) -> None:
        self.tally[_category(f["outcome"])] += 1
        self.agent_s += f["duration_s"] or 0.0
        self.cost_units += _units(f["cost_usd"])
        self.tokens += f["tokens"] or 0
        self.tokens_estimated |= f["tokens_estimated"]
        self.commits += f["commits"] or 0
        self.insertions += f["insertions"] or 0
        self.deletions += f["deletions"] or 0

    def span(self, start: float | None, end: float | None) -> None:
        if start is not None and end is not None:
            self.start = start if self.start is None else min(self.start, start)
            self.end = end if self.end is None else max(self.end, end)

    def counts(self) -> reportshapes.ReportCounts:
        wall = None if self.start is None or self.end is None else self.end - self.start
        t = self.tally
        return {
            "features": t.total(),
            "completed": t["completed"],
            "failed": t["failed"],
            "skipped": t["skipped"],
            "pending": t["pending"],
            "running": t["running"],
            "cancelled": t["cancelled"],
            "wall_s": None if wall is None else round(max(0.0, wall), 3),
            "agent_s": round(self.agent_s, 3),
            "cost_usd": self.cost_units / _COST_UNIT,
            "tokens": self.tokens,
            "tokens_estimated": self.tokens_estimated,
            "commits": self.commits,
            "insertions": self.insertions,
            "deletions": self.deletions,
        }


def _category(outcome: str) -> str:
    """The column of the counts a feature's outcome falls in."""
    if outcome in _RUNNING:
        return "running"
    return "pending" if outcome in _PENDING else outcome


def _units(cost: float | None) -> int:
    return round(cost * _COST_UNIT) if cost else 0


@dataclass(frozen=True)
class _BatchView:
    item: reportshapes.ReportBatch
    retry: RetryState
    sums: _Sum


def _batch(b: BatchRecords, log_path: LogPath, now: float) -> _BatchView:
    s, r = b.state, b.retry
    by_index: dict[int, list[Attempt]] = {}
    for a in s.processing_history:
        by_index.setdefault(a.feature_index, []).append(a)
    settled = _Settled(
        set(s.completed_features),
        {f.feature_index: f.error_message for f in s.failed_features},
        set(s.skipped_features),
        s.status == "cancelled",
    )
    features = [
        _feature(s, i, by_index.get(i, []), settled, log_path, now) for i in range(s.total_features)
    ]
    acc = _Sum()
    for f in features:
        acc.add(f)
    if s.processing_history:
        end = parse_iso(s.updated_at) if s.status in FINISHED else now
        acc.span(parse_iso(s.processing_history[0].started_at), end)
    item: reportshapes.ReportBatch = {
        "batch_id": s.batch_id,
        "seq": s.seq,
        "name": s.name,
        "status": s.status,
        "pause_reason": s.pause_reason,
        "runner": s.runner,
        "cwd": s.cwd,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
        "circuit_breaker_open": r.circuit_breaker_open,
        "consecutive_failures": r.consecutive_failures,
        "counts": acc.counts(),
        "features": features,
    }
    if s.git is not None:  # a worktree batch (other batches' reports read as they did)
        item["branch"] = s.git.branch
        item["git_note"] = _git_note(s)
    return _BatchView(item, r, acc)


def _git_note(s: BatchState) -> str:
    """A worktree batch's base and what became of it, and its kept worktrees, in words."""
    rec = s.git
    assert rec is not None
    base = rec.base_ref or "a detached HEAD"
    words = [f"branch {rec.branch} from {base} at {rec.base_commit[:12]}"]
    words += [rec.forward] if rec.forward else []
    kept = [rec.worktree] if rec.step == "kept" else []
    kept += [f.worktree for f in rec.features if f.step == "kept"]
    words += (
        [f"kept (uncommitted changes; 'batchctl prune' removes): {', '.join(kept)}"] if kept else []
    )
    return "; ".join(words)


@dataclass(frozen=True)
class _Settled:
    completed: set[int]
    failed: dict[int, str]  # index -> why
    skipped: set[int]
    cancelled: bool


def _feature(
    s: BatchState,
    index: int,
    attempts: Sequence[Attempt],
    settled: _Settled,
    log_path: LogPath,
    now: float,
) -> reportshapes.ReportFeature:
    last = attempts[-1] if attempts else None
    check, check_exit = _check(last)
    git = [a.git for a in attempts if a.git is not None]
    error = settled.failed.get(index)
    if error is None and last is not None and index not in settled.completed:
        error = last.error_message
    return {
        "index": index,
        "feature": s.features[index] if index < len(s.features) else "",
        "outcome": _outcome(index, last, settled),
        "attempts": max((a.attempt for a in attempts), default=0),
        "duration_s": _duration(attempts, now),
        "cost_usd": _cost(attempts),
        "tokens": _sum_or_none(a.tokens for a in attempts),
        "tokens_estimated": any(a.tokens_estimated for a in attempts),
        "commits": sum(g.commits for g in git) if git else None,
        "files_changed": sum(g.files_changed for g in git) if git else None,
        "insertions": sum(g.insertions for g in git) if git else None,
        "deletions": sum(g.deletions for g in git) if git else None,
        "dirty": git[-1].dirty if git else None,
        "check": check,
        "check_exit_code": check_exit,
        "error": error,
        "session_id": next((a.session_id for a in reversed(attempts) if a.session_id), None),
        "log_path": None if last is None else str(log_path(s.batch_id, index, last.attempt)),
    }


def _outcome(index: int, last: Attempt | None, settled: _Settled) -> str:
    if index in settled.completed:
        return "completed"
    if index in settled.failed:
        return "failed"
    if index in settled.skipped:
        return "skipped"
    if last is not None and last.outcome is None:
        return last.phase or "running"
    if settled.cancelled:
        return "cancelled"
    if last is not None and last.outcome == "limited":
        return "limited"
    if last is not None and last.outcome in ("failed", "timed_out"):
        return "retry_wait"
    return "pending"


def _check(last: Attempt | None) -> tuple[str | None, int | None]:
    """The check of the feature's last attempt: passed, failed, timed_out, running, or None.

    ``verified`` false without a ``verify`` result is ``require_change``'s failure
    (no check ran): ``unchanged``.
    """
    if last is None:
        return None, None
    if last.outcome is None:
        return ("running", None) if last.phase == "verifying" else (None, None)
    v = last.verify
    if v is not None:
        if last.verified or v.exit_code == 0:
            return "passed", v.exit_code
        return ("timed_out", None) if v.exit_code is None else ("failed", v.exit_code)
    if last.verified is False:
        return "unchanged", None
    return ("passed", None) if last.verified else (None, None)


def _duration(attempts: Sequence[Attempt], now: float) -> float | None:
    total: float | None = None
    for a in attempts:
        d = a.duration_s
        if d is None and a.outcome is None:
            d = max(0.0, now - parse_iso(a.started_at))
        if d is not None:
            total = (total or 0.0) + d
    return None if total is None else round(total, 3)


def _cost(attempts: Sequence[Attempt]) -> float | None:
    costs = [a.cost_usd for a in attempts if a.cost_usd is not None]
    return round(sum(costs) * _COST_UNIT) / _COST_UNIT if costs else None


def _sum_or_none(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
