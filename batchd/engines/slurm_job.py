"""One Slurm job's life as batchd follows it: a pure state machine, in one table.

Owns the phase of one attempt's job (waiting, TERM due, TERM sent, KILL due,
KILL sent, ended), every transition between phases (``TRANSITIONS``), what
batchd must do and when (``SlurmJob.due``, ``SlurmJob.tick``), why it was
cancelled (a stop, its timeout, or a stall: its log stopped growing for
``runner.stall_timeout``), what to look at (``probe_wanted``: the log's size
and whether the program has ended, which lifts both timers since what runs
then is the check), and the order in which the due cancellations of several
jobs go out (``cancel_commands``: pending jobs first, so that none starts
meanwhile on a slot another one frees).

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
    PROBED = "probed"  # the engine looked at the log's size and the program's exit status
    STOP = "stop"  # Run.stop(): cancel, the attempt is interrupted
    TIME_UP = "time_up"  # the deadline passed: cancel, the attempt timed out
    STALL = "stall"  # the log has not grown for stall_timeout: cancel, the attempt stalled
    GRACE_UP = "grace_up"  # kill_grace has passed since TERM went out
    SENT = "sent"  # scancel delivered the due signal
    SEND_FAILED = "send_failed"  # Slurm could not be asked: try again at retry_at
    ENDED = "ended"  # the job left Slurm's queue, or Slurm forgot it


P, E = Phase, Event
# The whole life, one table: phase -> event -> next phase. A pair not listed cannot happen.
TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    P.WAITING: {
        E.SEEN: P.WAITING,
        E.PROBED: P.WAITING,
        E.STOP: P.TERM_DUE,
        E.TIME_UP: P.TERM_DUE,
        E.STALL: P.TERM_DUE,
        E.ENDED: P.ENDED,
    },
    P.TERM_DUE: {
        E.SEEN: P.TERM_DUE,
        E.PROBED: P.TERM_DUE,
        E.STOP: P.TERM_DUE,
        E.SENT: P.TERM_SENT,
        E.SEND_FAILED: P.TERM_DUE,
        E.ENDED: P.ENDED,
    },
    P.TERM_SENT: {
        E.SEEN: P.TERM_SENT,
        E.PROBED: P.TERM_SENT,
        E.STOP: P.TERM_SENT,
        E.GRACE_UP: P.KILL_DUE,
        E.ENDED: P.ENDED,
    },
    P.KILL_DUE: {
        E.SEEN: P.KILL_DUE,
        E.PROBED: P.KILL_DUE,
        E.STOP: P.KILL_DUE,
        E.SENT: P.KILL_SENT,
        E.SEND_FAILED: P.KILL_DUE,
        E.ENDED: P.ENDED,
    },
    P.KILL_SENT: {
        E.SEEN: P.KILL_SENT,
        E.PROBED: P.KILL_SENT,
        E.STOP: P.KILL_SENT,
        E.ENDED: P.ENDED,
    },
    P.ENDED: {
        E.STOP: P.ENDED,
    },
}
# The signal to send in a phase where one is due.
SIGNALS: dict[Phase, Literal["TERM", "KILL"]] = {P.TERM_DUE: "TERM", P.KILL_DUE: "KILL"}
del P, E

Cause = Literal["stop", "timeout", "stall"]
# Why a job leaves WAITING: set once, by the event that moves it on.
CAUSES: dict[Event, Cause] = {Event.STOP: "stop", Event.TIME_UP: "timeout", Event.STALL: "stall"}


class JobStateError(Exception):
    """An event the table has no entry for in the current phase: a bug of the caller."""


@dataclass(frozen=True, kw_only=True)
class JobState:
    """Everything ``SlurmJob`` knows, in one value (tests compare it whole)."""

    phase: Phase = Phase.WAITING
    slurm_state: str = "PENDING"  # as last seen: what ``status`` shows
    deadline: float | None = None  # monotonic; set once the job is seen running
    # With a stall timeout: since when the log has not grown (monotonic; from the job's start,
    # then the probe that saw it grow), and its size then (the attempt's offset at first).
    quiet_since: float | None = None
    log_size: int | None = None
    program_ended: bool = False  # the wrapper recorded the program's exit: no timer applies
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

    def __init__(
        self,
        timeout: float,
        kill_grace: float,
        state: JobState | None = None,
        stall_timeout: float = 0.0,
    ) -> None:
        self.timeout = timeout  # seconds of running time; 0: none
        self.kill_grace = kill_grace
        self.stall_timeout = stall_timeout  # seconds without the log growing; 0: none
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
        s = self.state
        deadline, quiet = s.deadline, s.quiet_since
        if run_time is not None and slurm_state not in NOT_STARTED:
            started = now - max(0.0, run_time - 1)
            if deadline is None and self.timeout > 0:
                deadline = started + self.timeout
            if quiet is None and self.stall_timeout > 0:
                quiet = started
        new = replace(s, slurm_state=slurm_state, deadline=deadline, quiet_since=quiet)
        self._fire(Event.SEEN, new)

    def probed(self, log_size: int | None, program_ended: bool, now: float) -> None:
        """At ``now`` the attempt log holds ``log_size`` bytes (None: unreadable, no news) and
        the wrapper has (or has not) recorded the program's exit status.

        A log that grew restarts the quiet time (from now: it grew at most a probe ago, so a
        stall is never found early). Once the program has ended, what runs is the check,
        under its own time limit: neither ``runner.timeout`` nor the stall timeout applies.
        """
        s = self.state
        size, quiet = s.log_size, s.quiet_since
        if log_size is not None and log_size != size:
            size = log_size
            quiet = now if quiet is not None else None
        ended = s.program_ended or program_ended
        self._fire(Event.PROBED, replace(s, log_size=size, quiet_since=quiet, program_ended=ended))

    def stop(self) -> bool:
        """Cancel the job (idempotent); True when that made a signal due."""
        return self._fire(Event.STOP)

    def tick(self, now: float) -> Signal | None:
        """Let the time pass to ``now``; the signal due now, if any."""
        timer = self._timer(now)
        if timer is not None:
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

    def _timer(self, now: float) -> Event | None:
        """The event the passing of time to ``now`` brings, if any: the deadline first."""
        s = self.state
        if s.phase is Phase.TERM_SENT and s.term_at is not None:
            return Event.GRACE_UP if now >= s.term_at + self.kill_grace else None
        if s.phase is not Phase.WAITING or s.program_ended:
            return None
        if s.deadline is not None and now >= s.deadline:
            return Event.TIME_UP
        stall = self._stall_due()
        return Event.STALL if stall is not None and now >= stall else None

    def _stall_due(self) -> float | None:
        q = self.state.quiet_since
        return q + self.stall_timeout if q is not None and self.stall_timeout > 0 else None

    def due(self) -> float | None:
        """When ``tick`` will have something to do (monotonic seconds), or None. The engine
        probes (``probed``) before each ``tick``, so a stall is judged on a fresh size."""
        s = self.state
        if s.phase is Phase.WAITING:
            if s.program_ended:
                return None
            timers = [t for t in (s.deadline, self._stall_due()) if t is not None]
            return min(timers, default=None)
        if s.phase in (Phase.TERM_DUE, Phase.KILL_DUE):
            return s.retry_at
        if s.phase is Phase.TERM_SENT and s.term_at is not None:
            return s.term_at + self.kill_grace
        return None

    def probe_wanted(self) -> bool:
        """Whether the engine should look at the log's size and the program's exit status:
        while a timer of the program's (timeout, stall) may still fire."""
        s = self.state
        timers = s.deadline is not None or s.quiet_since is not None
        return s.phase is Phase.WAITING and not s.program_ended and timers

    @property
    def timed_out(self) -> bool:
        return self.state.cause == "timeout"

    @property
    def stalled(self) -> bool:
        return self.state.cause == "stall"

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
