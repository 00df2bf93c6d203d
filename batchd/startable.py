"""When a batch may start a feature, and which: the candidates the scheduler sees. Pure.

The one rule (SPEC 5, 6, 11, 13, 15): a batch starts a feature when it is not finished, has
a feature left and is not paused, except for the breaker's half-open probe after its
cooldown; a pending retry (``ready_at``) keeps the batch's cwd reserved meanwhile; its
runner profile's usage-limit wait holds it without reserving the cwd. A sequential batch
offers its next feature; a parallel worktree batch offers each unsettled feature that
holds no slot, each in a worktree of its own (its retry wait is the batch's: while it
runs, nothing new of the batch starts, and what runs goes on).

Never: a clock, a file, a process; ``schedule.plan`` decides among the candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from batchd.model import FINISHED, BatchState, RetryState, parse_iso
from batchd.schedule import Candidate
from batchd.transitions import PAUSE_BREAKER


def timing(
    state: BatchState, retry: RetryState, cooldown: float, limit_until: float | None
) -> tuple[float | None, bool] | None:
    """Not before when (None: now) the batch may start a feature, and whether it keeps its
    cwd meanwhile; None when it may not (finished, nothing left, paused)."""
    if state.status in FINISHED or state.current_index >= state.total_features:
        return None
    if state.status == "paused":
        opened = retry.breaker_opened_at
        if state.pause_reason != PAUSE_BREAKER or cooldown <= 0 or opened is None:
            return None  # paused until someone resumes it
        return max(parse_iso(opened) + cooldown, limit_until or 0.0), False
    retry_at = parse_iso(retry.next_attempt_at) if retry.next_attempt_at else None
    if limit_until is not None and (retry_at is None or limit_until > retry_at):
        return limit_until, False
    return retry_at, True


def candidates(
    state: BatchState,
    retry: RetryState,
    settled: Collection[int],
    cooldown: float,
    cwd_of: Callable[[int], str],
    limit_until: float | None = None,
    *,
    busy: Collection[int] = (),
    limit: int = 1,
) -> list[Candidate]:
    """The batch's candidates: its next feature (sequential), or up to ``limit`` of its
    unsettled features not in ``busy`` (parallel; the breaker's probe is one feature,
    alone). ``cwd_of`` names the directory each would run in."""
    when = timing(state, retry, cooldown, limit_until)
    if when is None:
        return []
    ready_at, reserves = when
    profile = state.runner
    if not state.parallel:
        cwd = cwd_of(state.current_index)
        return [Candidate(state.batch_id, state.seq, cwd, ready_at, reserves, profile)]
    probe = state.status == "paused"
    if probe and busy:
        return []
    free: list[int] = []
    want = 1 if probe else limit
    for i in range(state.current_index, state.total_features):
        if len(free) >= want:
            break
        if i not in settled and i not in busy:
            free.append(i)
    return [
        Candidate(state.batch_id, state.seq, cwd_of(i), ready_at, reserves, profile, i)
        for i in free
    ]


def runnable(state: BatchState, retry: RetryState, now: float, cooldown: float) -> bool:
    """May the batch start a feature now (retry waits aside)? A probe only once its time
    has come."""
    when = timing(state, retry, cooldown, None)
    if when is None:
        return False
    ready_at, reserves = when
    return reserves or ready_at is None or ready_at <= now
