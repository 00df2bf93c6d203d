"""What starts now, read from the daemon's live state (SPEC 5, 11, 13 and 15).

Gathers the candidates of every unfinished batch (``startable``: its retry
wait, its breaker, its runner profile's usage-limit wait, the features of a
parallel batch that hold no slot) and hands them, with the running slots and
whether the queue is paused, to the one scheduling rule, ``schedule.plan``.
The engine's loop calls it once per turn and carries out the plan.

Never here: a change to ``Live`` or a batch, a write, a clock (``now`` is
given), a process; where a feature runs is the caller's ``cwd_key``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from batchd import limitwait, schedule, startable
from batchd.batch import Batch
from batchd.live import Live

CwdKey = Callable[[Batch, int], str]  # where a batch's feature runs, after realpath


def plan_now(
    live: Live,
    *,
    now: float,
    slots: int,
    cooldown: float,
    cwd_key: CwdKey,
    writes_failing: bool,
) -> tuple[schedule.Plan, dict[str, schedule.Candidate]]:
    """What starts now, and the candidates by their slot key (``writes_failing``: the state
    cannot be written, so nothing starts)."""
    waits = live.queue.limit_waits
    candidates: dict[str, schedule.Candidate] = {}
    for batch in live.batches.values():
        if batch.finished:
            continue
        until = limitwait.blocked_until(waits, batch.state.runner, now)
        busy = [s.index for s in live.slots_of(batch.batch_id)] if batch.state.parallel else ()
        cwd_of = partial(cwd_key, batch)
        state, retry, settled = batch.state, batch.retry, batch.settled
        for c in startable.candidates(
            state, retry, settled, cooldown, cwd_of, until, busy=busy, limit=slots
        ):
            candidates[c.key] = c
    plan = schedule.plan(
        candidates.values(),
        slots=slots,
        running={key: slot.cwd for key, slot in live.running.items()},
        paused=live.queue.queue_paused or writes_failing,
        now=now,
        probing=limitwait.probing(waits, now),
        running_profiles=[slot.batch.state.runner for slot in live.running.values()],
    )
    return plan, candidates
