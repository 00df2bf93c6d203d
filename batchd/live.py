"""The daemon's in-memory truth: the batches, the features running now, the queue, problems.

``Live`` is plain data with two small duties: ``touch`` (something changed:
wake the loop and the watchers) and the problem list (one problem per kind).
The engine owns the one ``Live`` and hands it to the parts that change it
(a feature's life, the commands, intake, recovery) and to the views that
read it. Nothing here does IO, starts anything or decides anything.

``Slot`` is one feature that holds a slot: its batch, index, cwd (after
realpath), what it was started with, and the run once it is started. ``running``
is keyed by slot (``Slot.key``): a batch's id, or for each running feature of a
parallel worktree batch ``<batch id>#<index>`` (SPEC 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import anyio

from batchd.batch import Batch
from batchd.engines import LaunchSpec, Run
from batchd.model import DaemonState, UserState
from batchd.schedule import slot_key
from batchd.spoolrules import SpoolReport
from batchd.store import Problem


class Stoppable(Protocol):
    def stop(self, reason: str) -> None: ...


@dataclass(eq=False)
class Slot:
    """A batch that holds a slot: its feature runs (or its before_feature hook, or its
    check, does)."""

    batch: Batch
    index: int
    cwd: str  # after realpath: no other feature runs there meanwhile
    spec: LaunchSpec
    run: Run | None = None
    stop_reason: str | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    check: Stoppable | None = None  # the check after the agent, while it runs
    recheck: bool = False  # found in its check after a restart: run the check again
    remerge: bool = False  # found in its merge after a restart: merge again (SPEC 15)

    @property
    def key(self) -> str:
        """Its key in ``Live.running``."""
        return slot_key(self.batch.batch_id, self.index if self.batch.state.parallel else None)

    def stop(self, reason: str) -> None:
        """End the feature now (the first reason counts); its life records the outcome."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.run is not None:
            self.run.stop(reason)
        if self.check is not None:
            self.check.stop(reason)

    def attach_check(self, check: Stoppable | None) -> None:
        """The check started (or ended): a stop now ends it too."""
        self.check = check
        if check is not None and self.stop_reason is not None:
            check.stop(self.stop_reason)


class Live:
    def __init__(self) -> None:
        self.batches: dict[str, Batch] = {}
        self.running: dict[str, Slot] = {}  # slot key -> its slot, in start order
        self.git_locks: dict[str, anyio.Lock] = {}  # batch id -> one git step of it at a time
        self.queue = DaemonState()  # daemon.json
        self.user = UserState()  # user_state.json
        self.problems: list[Problem] = []
        self.spool_report = SpoolReport()  # kept current by the spool: rejected files
        self.stopping = False  # SIGTERM: start nothing more
        self.version = 0  # counts changes, for watchers
        self.changed = anyio.Event()  # set (and replaced) on every change
        self.wake = anyio.Event()  # the engine's loop: plan again

    def touch(self) -> None:
        """Something changed: wake the loop and the watchers."""
        self.version += 1
        self.changed.set()
        self.changed = anyio.Event()
        self.wake.set()
        self.wake = anyio.Event()

    def set_problem(self, kind: str, message: str | None, batch_id: str | None = None) -> None:
        """Report (or, with None, clear) the one problem of ``kind``."""
        self.problems = [p for p in self.problems if p.kind != kind]
        if message is not None:
            self.problems.append(Problem(kind, message, batch_id))
        self.touch()

    def has_problem(self, kind: str) -> bool:
        return any(p.kind == kind for p in self.problems)

    def slots_of(self, batch_id: str) -> list[Slot]:
        """The batch's running features (one, or one per feature of a parallel batch)."""
        return [slot for slot in self.running.values() if slot.batch.batch_id == batch_id]

    def slot_for(self, batch_id: str, index: int | None = None) -> Slot | None:
        """The batch's running feature (the first to start), or feature ``index`` of it."""
        slots = self.slots_of(batch_id)
        return next((s for s in slots if index is None or s.index == index), None)

    def git_lock(self, batch_id: str) -> anyio.Lock:
        """The batch's git steps in its own worktree (record, make, merge) one at a time."""
        lock = self.git_locks.get(batch_id)
        if lock is None:
            lock = self.git_locks[batch_id] = anyio.Lock()
        return lock

    async def stop_run(self, batch: Batch, reason: str, index: int | None = None) -> bool:
        """Stop the batch's running features (only ``index``, if given) and wait until each
        outcome is recorded; False when nothing of it was running."""
        slots = [s for s in self.slots_of(batch.batch_id) if index is None or s.index == index]
        for slot in slots:
            slot.stop(reason)
        for slot in slots:
            await slot.done.wait()
        return bool(slots)

    async def stop_all_runs(self, reason: str) -> int:
        """Stop every running feature and wait until each outcome is recorded."""
        slots = list(self.running.values())
        for slot in slots:
            slot.stop(reason)
        for slot in slots:
            await slot.done.wait()
        return len(slots)
