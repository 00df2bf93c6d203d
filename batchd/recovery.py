"""Start-up: load the state dir, then deal with what a killed daemon left running.

Order (the contract of ``READY=1``): every state file is read (unreadable ones
are quarantined and reported); a queue pause caused by runner or cluster
trouble is lifted (a restart usually follows a fix); the git steps a kill cut
short in worktree batches are repeated (``worktreeend.recover``); then, for every
attempt without an outcome, the engine is asked to find the run again (an
attempt in its check or its merge is finished by its feature's life instead).
A run it can wait on (a Slurm job still queued or running, or one that ended
meanwhile) is adopted and judged when it ends, as if nothing had happened;
otherwise the attempt is recorded ``interrupted`` and runs again, uncharged.
Last, runs of this state dir that no attempt records (a kill between the
start and the write) are stopped.
"""

from __future__ import annotations

import logging
from typing import Protocol

from batchd import queue, runfile, worktreeend
from batchd.batch import Batch
from batchd.clock import Clock
from batchd.engines import LaunchSpec, Run, RunnerEngine, RunRef
from batchd.journal import Journal
from batchd.live import Live, Slot
from batchd.model import AuditEvent
from batchd.rules import Rules
from batchd.store import Store

log = logging.getLogger("batchd")


class Recovering(Protocol):
    """What start-up recovery is given (the engine implements it)."""

    live: Live
    store: Store
    journal: Journal
    clock: Clock
    runner: RunnerEngine

    @property
    def run_id_prefix(self) -> str: ...

    @property
    def rules(self) -> Rules: ...

    def worktree_root(self) -> str: ...

    def persist(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> bool: ...

    def save_queue(self) -> bool: ...

    def launch_spec(self, batch: Batch, index: int, run_id: str | None = None) -> LaunchSpec: ...

    def adopt(
        self, batch: Batch, index: int, spec: LaunchSpec, run: Run | None, *, remerge: bool = False
    ) -> Slot: ...


def load(engine: Recovering) -> None:
    """Read every state file into the live state."""
    store, live = engine.store, engine.live
    live.queue = store.load_daemon()
    live.user = store.load_user()
    loaded, problems = store.load_batches()
    for p in problems:
        log.error("state: %s", p.message)
        live.problems.append(p)
    for state, retry in loaded:
        batch = Batch(state, retry)
        live.batches[batch.batch_id] = batch
        engine.journal.loaded(batch)
    if store.temp_files_removed:
        log.info(
            "state: removed %d temp files left by an interrupted write (harmless)",
            store.temp_files_removed,
        )
    top = max((b.state.seq for b in live.batches.values()), default=0)
    live.queue.next_seq = max(live.queue.next_seq, top + 1)
    if queue.lift_trouble_pause(live.queue, engine.clock.now()):
        log.info("queue: the pause for runner trouble is lifted at start; it returns if not fixed")
        engine.save_queue()


async def recover(engine: Recovering) -> list[Slot]:
    """Find the runs a killed daemon left; return those to wait on (adopted), and the
    attempts that were in their check (their check runs again, never the agent)."""
    await worktreeend.recover(engine)
    adopted: list[Slot] = []
    for batch, attempt in [(b, a) for b in engine.live.batches.values() for a in b.open_attempts()]:
        index = attempt.feature_index
        spec = engine.launch_spec(batch, index, attempt.run_id)
        if attempt.phase == "merging":
            log.info(
                "recovery: %s feature %d attempt %d was in its merge; the merge is finished",
                batch.batch_id,
                index + 1,
                attempt.attempt,
            )
            adopted.append(engine.adopt(batch, index, spec, None, remerge=True))
            continue
        if attempt.phase == "verifying":
            log.info(
                "recovery: %s feature %d attempt %d was in its check; the check runs again",
                batch.batch_id,
                index + 1,
                attempt.attempt,
            )
            adopted.append(engine.adopt(batch, index, spec, None))
            continue
        ref = RunRef(pid=attempt.pid, pid_start_time=attempt.pid_start_time, job_id=attempt.job_id)
        run = await engine.runner.reattach(ref, spec)
        if run is None:
            _interrupted(engine, batch, index, attempt.attempt)
            continue
        log.info(
            "recovery: %s feature %d attempt %d outlived the daemon (now %s); following it",
            batch.batch_id,
            index + 1,
            attempt.attempt,
            run.describe() or "running",
        )
        adopted.append(engine.adopt(batch, index, spec, run))
    # A check left running by the killed daemon carries its attempt's run id: it is not
    # known, so it is stopped here before its check runs again.
    known = {slot.spec.run_id for slot in adopted if not slot.recheck}
    for line in await engine.runner.stop_orphans(engine.run_id_prefix, known):
        log.warning("recovery: stopped a run no attempt records: %s", line)
    _discard_stale_run_temps(engine)  # after stop_orphans: the keepers have settled
    return adopted


def _discard_stale_run_temps(engine: Recovering) -> None:
    """Temp run files a keeper killed mid-write left beside closed attempts' logs."""
    for batch in engine.live.batches.values():
        keep = [(a.feature_index, a.attempt) for a in batch.open_attempts()]
        logs = engine.store.batch_dir(batch.batch_id) / "logs"
        runfile.discard_stale_temps(logs, keep)


def _interrupted(engine: Recovering, batch: Batch, index: int, number: int) -> None:
    why = "interrupted: the daemon stopped during the run"
    batch.mark_interrupted(engine.clock.now(), why, index)
    engine.persist(batch)
    log.info(
        "recovery: %s feature %d attempt %d was interrupted by the stop; it runs again",
        batch.batch_id,
        index + 1,
        number,
    )
