"""One Slurm job's life as batchd follows it: a pure state machine, in one table.

Owns the phase of one attempt's job (waiting, TERM due, TERM sent, KILL due,
KILL sent, ended), every transition between phases (``TRANSITIONS``), what
batchd must do and when (``SlurmJob.due``, ``SlurmJob.tick``), why it was
cancelled (a stop or its timeout), and the order in which the due
cancellations of several jobs go out (``cancel_commands``: pending jobs
first, so that none starts meanwhile on a slot another one frees).

``SlurmJob`` is fed events with ``now`` (monotonic seconds, from the
engine's injected clock) and hands back what is due; it is what
``SlurmRun`` asks, as h11's ``ConnectionState`` is what ``Connection`` asks.

What it must never do: run a command, read the clock, or sleep. An event
that has no entry in the table for the current phase is a bug of the caller
(``JobStateError``), never silently ignored.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from batchd.engines.slurm_protocol import NOT_STARTED


class Phase(enum.Enum):
    WAITING = "waiting"  # queued or running: nothing to do until a stop or the deadline
    TERM_DUE = "term_due"  # to be cancelled: TERM now (or at retry_at, after a failed scancel)
    TERM_SENT = "term_sent"  # TERM went out: KILL is due kill_grace later
    KILL_DUE = "kill_due"  # KILL now (or at retry_at)
    KILL_SENT = "kill_sent"  # Slurm ends the job on its own now; wait for the end
    ENDED = "ended"  # the job runs no more (or Slurm forgot it)


class Event(enum.Enum):
    SEEN = "seen"  # the poller saw the job alive (pending, running, completing)
    STOP = "stop"  # Run.stop(): cancel, the attempt is interrupted
    TIME_UP = "time_up"  # the deadline passed: cancel, the attempt timed out
    GRACE_UP = "grace_up"  # kill_grace has passed since TERM went out
    SENT = "sent"  # scancel delivered the due signal
    SEND_FAILED = "send_failed"  # Slurm could not be asked: try again at retry_at
    ENDED = "ended"  # the job left Slurm's queue, or Slurm forgot it


P, E = Phase, Event
# The whole life, one table: phase -> event -> next phase. A pair not listed cannot happen.
TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    P.WAITING: {
        E.SEEN: P.WAITING,
        E.STOP: P.TERM_DUE,
        E.TIME_UP: P.TERM_DUE,
        E.ENDED: P.ENDED,
    },
    P.TERM_DUE: {
        E.SEEN: P.TERM_DUE,
        E.STOP: P.TERM_DUE,
        E.SENT: P.TERM_SENT,
        E.SEND_FAILED: P.TERM_DUE,
        E.ENDED: P.ENDED,
    },
    P.TERM_SENT: {
        E.SEEN: P.TERM_SENT,
        E.STOP: P.TERM_SENT,
        E.GRACE_UP: P.KILL_DUE,
        E.ENDED: P.ENDED,
    },
    P.KILL_DUE: {
        E.SEEN: P.KILL_DUE,
        E.STOP: P.KILL_DUE,
        E.SENT: P.KILL_SENT,
        E.SEND_FAILED: P.KILL_DUE,
        E.ENDED: P.ENDED,
    },
    P.KILL_SENT: {
        E.SEEN: P.KILL_SENT,
        E.STOP: P.KILL_SENT,
        E.ENDED: P.ENDED,
    },
    P.ENDED: {
        E.STOP: P.ENDED,
    },
}
# The event that the passing of time brings to a phase that waits for a moment (``due``).
TIMERS: dict[Phase, Event] = {P.WAITING: E.TIME_UP, P.TERM_SENT: E.GRACE_UP}
# The signal to send in a phase where one is due.
SIGNALS: dict[Phase, Literal["TERM", "KILL"]] = {P.TERM_DUE: "TERM", P.KILL_DUE: "KILL"}
del P, E

Cause = Literal["stop", "timeout"]
# Why a job leaves WAITING: set once, by the event that moves it on.
CAUSES: dict[Event, Cause] = {Event.STOP: "stop", Event.TIME_UP: "timeout"}


class JobStateError(Exception):
    """An event the table has no entry for in the current phase: a bug of the caller."""


@dataclass(frozen=True, kw_only=True)
class JobState:
    """Everything ``SlurmJob`` knows, in one value (tests compare it whole)."""

    phase: Phase = Phase.WAITING
    slurm_state: str = "PENDING"  # as last seen: what ``status`` shows
    deadline: float | None = None  # monotonic; set once the job is seen running
    cause: Cause | None = None  # why it is being cancelled
    term_at: float | None = None  # when TERM went out
    retry_at: float = -math.inf  # after a failed scancel: not before this


@dataclass(frozen=True)
class Signal:
    """A signal due for the job now; ``pending``: it was last seen pending (cancel it
    outright first, since Slurm holds a signal to a pending job until the job starts)."""

    name: Literal["TERM", "KILL"]
    pending: bool = False


class SlurmJob:
    """The phase of one job, fed events; see the module docstring and ``TRANSITIONS``."""

    def __init__(self, timeout: float, kill_grace: float, state: JobState | None = None) -> None:
        self.timeout = timeout  # seconds of running time; 0: none
        self.kill_grace = kill_grace
        self.state = state if state is not None else JobState()

    def _fire(self, event: Event, data: JobState | None = None) -> bool:
        """Apply ``event`` (``data``: the state with what the event brings); True when the
        phase changed."""
        old = self.state.phase
        new = TRANSITIONS[old].get(event)
        if new is None:
            raise JobStateError(f"a Slurm job in phase {old.value} cannot take event {event.value}")
        base = data if data is not None else self.state
        cause = CAUSES[event] if old is Phase.WAITING and event in CAUSES else base.cause
        self.state = replace(base, phase=new, cause=cause)
        return new is not old

    # -- events -------------------------------------------------------------------------

    def seen(self, slurm_state: str, run_time: float | None, now: float) -> None:
        """The job is alive in ``slurm_state``, having run ``run_time`` seconds at ``now``.

        batchd's timeout counts from the job's start, not from the time it
        queued. Slurm counts whole seconds, rounded down: one is taken off so
        as never to end a job early.
        """
        deadline = self.state.deadline
        if (
            deadline is None
            and self.timeout > 0
            and run_time is not None
            and slurm_state not in NOT_STARTED
        ):
            deadline = now - max(0.0, run_time - 1) + self.timeout
        self._fire(Event.SEEN, replace(self.state, slurm_state=slurm_state, deadline=deadline))

    def stop(self) -> bool:
        """Cancel the job (idempotent); True when that made a signal due."""
        return self._fire(Event.STOP)

    def tick(self, now: float) -> Signal | None:
        """Let the time pass to ``now``; the signal due now, if any."""
        timer = TIMERS.get(self.state.phase)
        due = self.due()
        if timer is not None and due is not None and now >= due:
            self._fire(timer)
        s = self.state
        name = SIGNALS.get(s.phase)
        if name is None or now < s.retry_at:
            return None
        return Signal(name, pending=name == "TERM" and s.slurm_state == "PENDING")

    def sent(self, now: float) -> None:
        """scancel delivered the due signal at ``now``."""
        term_at = now if self.state.phase is Phase.TERM_DUE else self.state.term_at
        self._fire(Event.SENT, replace(self.state, term_at=term_at))

    def send_failed(self, now: float, retry_in: float) -> None:
        """scancel could not reach Slurm at ``now``: try again ``retry_in`` seconds later."""
        self._fire(Event.SEND_FAILED, replace(self.state, retry_at=now + retry_in))

    def ended(self, end_state: str | None) -> None:
        """The job runs no more, in ``end_state`` (None: Slurm no longer knows it)."""
        self._fire(
            Event.ENDED, replace(self.state, slurm_state=end_state or self.state.slurm_state)
        )

    # -- queries ------------------------------------------------------------------------

    def due(self) -> float | None:
        """When ``tick`` will have something to do (monotonic seconds), or None."""
        s = self.state
        if s.phase is Phase.WAITING:
            return s.deadline
        if s.phase in (Phase.TERM_DUE, Phase.KILL_DUE):
            return s.retry_at
        if s.phase is Phase.TERM_SENT and s.term_at is not None:
            return s.term_at + self.kill_grace
        return None

    @property
    def timed_out(self) -> bool:
        return self.state.cause == "timeout"

    @property
    def interrupted(self) -> bool:
        return self.state.cause == "stop"


def round_due(last_poll: float, poll_interval: float, dues: Iterable[float | None]) -> float:
    """When the poller's next round is due: the next poll, or an earlier job's due moment."""
    return min([last_poll + poll_interval, *(d for d in dues if d is not None)])


@dataclass(frozen=True)
class Scancel:
    """One ``scancel`` to run; ``job_id``: the job whose signal it delivers (its success
    is fed back to that job), None for the outright cancel of pending jobs."""

    args: tuple[str, ...]
    job_id: str | None = None


def cancel_commands(due: Sequence[tuple[str, Signal]]) -> list[Scancel]:
    """The scancels that deliver the due signals of several jobs, in order.

    Pending jobs go first, and are cancelled outright (``--state=PENDING``:
    only if still pending) before any running job is signalled: a running
    job's end frees room on the cluster, where a pending job of the same stop
    would otherwise start meanwhile. ``--full`` reaches every process of the
    job (the wrapper then records the program's status).
    """
    ordered = sorted(due, key=lambda d: not d[1].pending)  # stable: pending first
    pending = [job_id for job_id, sig in ordered if sig.pending]
    first = [Scancel(("--state=PENDING", *pending))] if pending else []
    signals = [
        Scancel((f"--signal={sig.name}", "--full", job_id), job_id) for job_id, sig in ordered
    ]
    return first + signals
