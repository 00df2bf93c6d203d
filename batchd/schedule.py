"""Which batches start a feature now, and when to look again (SPEC 5 and 11). Pure.

The whole scheduling rule, in one function:

- at most ``slots`` features run at once, and a batch runs one at a time, except a
  parallel worktree batch (SPEC 15), each of whose features is a candidate of its own
  (``Candidate.index``) in a worktree of its own;
- two features never run in one working directory (compared after realpath,
  by the caller): later features of a repository may build on earlier ones;
- a batch waiting for a retry frees its slot but keeps its cwd reserved, so
  nothing slips into that repository meanwhile;
- whenever a slot is free, the lowest ``seq`` whose cwd is free goes first,
  so a slow batch never holds back a batch in another cwd;
- nothing starts while the queue is paused;
- a runner profile that waits for its usage limit starts nothing (its
  candidates carry the wait as ``ready_at``, without reserving their cwd);
  once the wait has passed, the profile is ``probing``: one feature of it at a
  time, until that probe's outcome ends the wait or starts a new one.

``plan`` takes values, ``now`` included, and returns a ``Plan``; the engine
carries it out and calls ``plan`` again whenever something changed or the
plan's ``wake_at`` has come.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """A batch with a feature left to run, as the scheduler sees it."""

    batch_id: str
    seq: int
    cwd: str  # the effective working directory, after realpath
    ready_at: float | None = None  # not before: a retry wait, or a breaker's half-open time
    reserves_cwd: bool = True  # while waiting for ready_at, keep the cwd for itself
    profile: str = "default"  # the runner profile (usage-limit waits are per profile)
    index: int | None = None  # a feature of a parallel batch: it holds a slot of its own

    @property
    def key(self) -> str:
        """What holds the slot once it starts: the batch, or one feature of a parallel one."""
        return slot_key(self.batch_id, self.index)


def slot_key(batch_id: str, index: int | None) -> str:
    """The key of a running feature: its batch id (a batch holds one slot), or for a
    feature of a parallel batch ``<batch id>#<index>``."""
    return batch_id if index is None else f"{batch_id}#{index}"


@dataclass(frozen=True)
class Plan:
    start: tuple[str, ...] = ()  # slot keys (``Candidate.key``), in the order to start them
    wake_at: float | None = None  # plan again then (epoch seconds), if nothing else happens


def plan(
    candidates: Iterable[Candidate],
    *,
    slots: int,
    running: Mapping[str, str],
    paused: bool,
    now: float,
    probing: Collection[str] = (),
    running_profiles: Collection[str] = (),
) -> Plan:
    """Decide what starts now. ``running`` maps each busy slot key to its cwd;
    ``running_profiles`` is the profile of each running feature; ``probing`` the
    profiles that may run one feature at a time (their usage-limit probe)."""
    waiting = [c for c in candidates if c.key not in running and c.batch_id not in running]
    wake_at = min(
        (c.ready_at for c in waiting if c.ready_at is not None and c.ready_at > now), default=None
    )
    if paused:
        return Plan((), None)
    busy = set(running.values())
    busy.update(c.cwd for c in waiting if c.reserves_cwd and _later(c, now))
    probes_busy = set(running_profiles) & set(probing)
    free = slots - len(running)
    start: list[str] = []
    for c in sorted(waiting, key=lambda c: (c.seq, c.index or 0)):
        if free <= 0:
            break
        if _later(c, now) or c.cwd in busy or c.profile in probes_busy:
            continue
        start.append(c.key)
        busy.add(c.cwd)
        if c.profile in probing:
            probes_busy.add(c.profile)
        free -= 1
    return Plan(tuple(start), wake_at)


def _later(c: Candidate, now: float) -> bool:
    return c.ready_at is not None and c.ready_at > now
