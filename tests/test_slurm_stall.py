"""A Slurm job's stall and the program's end (engines/slurm_job.py, SPEC 13 and 14): the
quiet time of its log, fed as probes on a ManualClock, and the agent's timers lifted once
the wrapper recorded the program's exit (what runs then is the check). Pure: no loop, no
cluster, no real seconds."""

from __future__ import annotations

import pytest

from batchd.clock import ManualClock
from batchd.engines.slurm_job import JobState, Phase, Signal, SlurmJob

Step = tuple[float, str, object]  # (seconds to advance the clock, what happens, its argument)


def drive(job: SlurmJob, clock: ManualClock, steps: list[Step]) -> list[object]:
    """Feed ``job`` the steps on ``clock``; what each step gave back (the signal of a tick)."""
    out: list[object] = []
    for advance, what, arg in steps:
        clock.advance(advance)
        if what == "tick":
            out.append(job.tick(clock.now()))
            continue
        assert isinstance(arg, tuple)
        if what == "seen":
            job.seen(arg[0], arg[1], clock.now())
        else:
            job.probed(arg[0], arg[1], clock.now())
        out.append(None)
    return out


STALL_CASES: list[tuple[str, list[Step], list[object], Phase, float | None]] = [
    (
        # Seen running at 1000 (run time 0): quiet from then; a probe seeing the log at its
        # offset (100) is no news; 10 s after the start, TERM.
        "silent from the start",
        [
            (0, "seen", ("RUNNING", 0.0)),
            (9.5, "probe", (100, False)),
            (0, "tick", None),
            (0.5, "probe", (100, False)),
            (0, "tick", None),
        ],
        [None, None, None, None, Signal("TERM")],
        Phase.TERM_DUE,
        1000.0,
    ),
    (
        # Output noticed at 1006 restarts the quiet time: nothing at 1010, TERM at 1016.
        "output restarts the quiet time",
        [
            (0, "seen", ("RUNNING", 0.0)),
            (6, "probe", (180, False)),
            (4, "tick", None),
            (5.9, "probe", (180, False)),
            (0, "tick", None),
            (0.1, "tick", None),
        ],
        [None, None, None, None, None, Signal("TERM")],
        Phase.TERM_DUE,
        1006.0,
    ),
    (
        # Pending for an hour counts nothing; the quiet time starts when it runs.
        "pending does not count",
        [
            (0, "seen", ("PENDING", 0.0)),
            (3600, "tick", None),
            (0, "seen", ("RUNNING", 0.0)),
            (9.9, "probe", (100, False)),
            (0, "tick", None),
        ],
        [None, None, None, None, None],
        Phase.WAITING,
        4600.0,
    ),
    (
        # Seen first at 5 s of run time: the quiet time started (5 - 1) s before.
        "first seen late",
        [
            (0, "seen", ("RUNNING", 5.0)),
            (5.9, "probe", (100, False)),
            (0, "tick", None),
            (0.1, "probe", (100, False)),
            (0, "tick", None),
        ],
        [None, None, None, None, Signal("TERM")],
        Phase.TERM_DUE,
        996.0,
    ),
    (
        # The program ended (its status is recorded): what runs is the check, no stall.
        "the program's end lifts it",
        [(0, "seen", ("RUNNING", 0.0)), (2, "probe", (100, True)), (3600, "tick", None)],
        [None, None, None],
        Phase.WAITING,
        1000.0,
    ),
    (
        # An unreadable log (None) is no news: neither output nor silence is proven anew.
        "an unreadable log is no news",
        [
            (0, "seen", ("RUNNING", 0.0)),
            (5, "probe", (None, False)),
            (5, "probe", (100, False)),
            (0, "tick", None),
        ],
        [None, None, None, Signal("TERM")],
        Phase.TERM_DUE,
        1000.0,
    ),
]


@pytest.mark.parametrize(
    ("name", "steps", "gave", "phase", "quiet"), STALL_CASES, ids=[c[0] for c in STALL_CASES]
)
def test_a_log_that_stops_growing_stops_the_job(
    name: str, steps: list[Step], gave: list[object], phase: Phase, quiet: float | None
) -> None:
    """runner.stall_timeout = 10 s on a manual clock: the quiet time counts from the start
    (or the probe that saw the log grow), never while pending, never once the program ended;
    the stall is due exactly 10 s after it, and the cause is a stall."""
    clock = ManualClock(1000.0)
    job = SlurmJob(timeout=0, kill_grace=5, state=JobState(log_size=100), stall_timeout=10)
    assert drive(job, clock, steps) == gave
    assert (job.state.phase, job.state.quiet_since) == (phase, quiet)
    assert job.stalled is (phase is Phase.TERM_DUE)
    assert not job.timed_out and not job.interrupted


def test_a_stalled_job_is_cancelled_like_a_timed_out_one() -> None:
    """After the stall: TERM, then KILL kill_grace later, then the end; the cause stays
    stall (a stop after it changes nothing); it is not probed any more, though a probe
    under way when the stall came is taken without changing the phase."""
    clock = ManualClock(0.0)
    job = SlurmJob(timeout=60, kill_grace=5, state=JobState(log_size=0), stall_timeout=10)
    job.seen("RUNNING", 0.0, clock.now())
    assert job.probe_wanted() and job.due() == 10.0
    clock.advance(10)
    job.probed(0, False, clock.now())
    assert job.tick(clock.now()) == Signal("TERM")
    assert not job.probe_wanted()
    job.probed(50, False, clock.now())  # a probe that was under way: its facts are kept
    assert job.state.phase is Phase.TERM_DUE
    job.sent(clock.now())
    assert job.stop() is False
    clock.advance(5)
    assert job.tick(clock.now()) == Signal("KILL")
    job.sent(clock.now())
    job.ended("CANCELLED")
    assert job.state == JobState(
        phase=Phase.ENDED,
        slurm_state="CANCELLED",
        deadline=60.0,
        quiet_since=10.0,
        log_size=50,
        cause="stall",
        term_at=10.0,
    )
    assert (job.stalled, job.timed_out, job.interrupted) == (True, False, False)


def test_the_deadline_wins_over_a_stall_due_at_the_same_moment() -> None:
    """Both due at once: a timeout, not a stall; the earlier of the two is what ``due`` says."""
    job = SlurmJob(timeout=10, kill_grace=5, state=JobState(log_size=0), stall_timeout=10)
    job.seen("RUNNING", 0.0, now=0.0)
    assert job.due() == 10.0
    job.probed(0, False, 10.0)
    assert job.tick(10.0) == Signal("TERM") and job.timed_out


def test_the_programs_end_lifts_the_timeout_too() -> None:
    """runner.timeout is the agent's: once the wrapper recorded its exit, the check runs on
    under its own limit and batchd's deadline no longer applies; nothing to probe then."""
    job = SlurmJob(timeout=10, kill_grace=5)
    assert not job.probe_wanted()  # not seen running: no timer yet
    job.seen("RUNNING", 0.0, now=0.0)
    assert job.probe_wanted() and job.due() == 10.0
    job.probed(None, True, 9.0)
    assert (job.due(), job.tick(1e9), job.probe_wanted()) == (None, None, False)
    assert job.state == JobState(slurm_state="RUNNING", deadline=10.0, program_ended=True)
    assert job.stop() is True  # a stop still ends it
