"""One Slurm job's phase (engines/slurm_job.py), h11 style: feed it events with ``now``,
assert the whole state after every step. Pure: no loop, no cluster, no real seconds."""

from __future__ import annotations

import math

import pytest

from batchd.engines.slurm_job import (
    TRANSITIONS,
    Event,
    JobState,
    JobStateError,
    Phase,
    Scancel,
    Signal,
    SlurmJob,
    cancel_commands,
    round_due,
)

RUNNING = JobState(slurm_state="RUNNING")


def test_no_timeout_means_no_deadline_and_nothing_due() -> None:
    """Without a timeout the job waits for its end: no deadline, nothing due, no signal."""
    job = SlurmJob(timeout=0, kill_grace=10)
    assert job.state == JobState()
    job.seen("RUNNING", 5.0, now=100.0)
    assert job.state == RUNNING
    assert (job.due(), job.tick(1e9)) == (None, None)
    assert job.state == RUNNING
    job.ended("COMPLETED")
    assert job.state == JobState(phase=Phase.ENDED, slurm_state="COMPLETED")
    assert (job.timed_out, job.interrupted) == (False, False)


def test_the_deadline_counts_from_the_start_with_slurms_second_taken_off() -> None:
    """Pending and configuring do not start the clock; the first sighting running sets the
    deadline once: now - (run_time - 1) + timeout (Slurm rounds its seconds down)."""
    job = SlurmJob(timeout=60, kill_grace=5)
    job.seen("PENDING", 0.0, now=10.0)
    assert job.state == JobState()
    job.seen("CONFIGURING", 0.0, now=11.0)
    assert job.state == JobState(slurm_state="CONFIGURING")
    job.seen("RUNNING", None, now=12.0)  # squeue's %M unreadable: no deadline yet
    assert job.state == RUNNING
    job.seen("RUNNING", 3.0, now=20.0)
    assert job.state == JobState(slurm_state="RUNNING", deadline=78.0)
    job.seen("RUNNING", 13.0, now=31.0)  # later sightings never move it
    assert job.state == JobState(slurm_state="RUNNING", deadline=78.0)
    assert job.due() == 78.0


def test_a_job_seen_at_its_first_second_gets_the_whole_timeout() -> None:
    """Run time 0 (or 1: Slurm's rounding) leaves the whole timeout from now."""
    for run_time in (0.0, 1.0):
        job = SlurmJob(timeout=60, kill_grace=5)
        job.seen("RUNNING", run_time, now=100.0)
        assert job.state == JobState(slurm_state="RUNNING", deadline=160.0)


def test_timeout_term_then_kill_after_the_grace() -> None:
    """At the deadline, not a moment before: TERM; kill_grace after it went out: KILL; the
    end after a timeout is timed_out, not interrupted."""
    job = SlurmJob(timeout=60, kill_grace=5, state=JobState(slurm_state="RUNNING", deadline=78.0))
    assert job.tick(77.999) is None
    assert job.state == JobState(slurm_state="RUNNING", deadline=78.0)
    assert job.tick(78.0) == Signal("TERM")
    timing_out = JobState(
        phase=Phase.TERM_DUE, slurm_state="RUNNING", deadline=78.0, cause="timeout"
    )
    assert job.state == timing_out
    assert job.stop() is False  # a stop now changes nothing: it timed out
    assert job.state == timing_out
    job.sent(78.5)
    term_sent = JobState(
        phase=Phase.TERM_SENT, slurm_state="RUNNING", deadline=78.0, cause="timeout", term_at=78.5
    )
    assert (job.state, job.due()) == (term_sent, 83.5)
    assert job.tick(83.4) is None
    assert job.state == term_sent
    assert job.tick(83.5) == Signal("KILL")
    kill_due = JobState(
        phase=Phase.KILL_DUE, slurm_state="RUNNING", deadline=78.0, cause="timeout", term_at=78.5
    )
    assert job.state == kill_due
    job.sent(83.6)
    kill_sent = JobState(
        phase=Phase.KILL_SENT, slurm_state="RUNNING", deadline=78.0, cause="timeout", term_at=78.5
    )
    assert (job.state, job.due(), job.tick(1e9)) == (kill_sent, None, None)
    job.seen("COMPLETING", 70.0, now=90.0)
    assert job.state == JobState(
        phase=Phase.KILL_SENT,
        slurm_state="COMPLETING",
        deadline=78.0,
        cause="timeout",
        term_at=78.5,
    )
    job.ended("CANCELLED")
    assert job.state == JobState(
        phase=Phase.ENDED, slurm_state="CANCELLED", deadline=78.0, cause="timeout", term_at=78.5
    )
    assert (job.timed_out, job.interrupted) == (True, False)


def test_a_stop_is_due_at_once_and_idempotent() -> None:
    """stop() makes TERM due now (True once, then False); the end is interrupted; a stop
    after the end changes nothing."""
    job = SlurmJob(timeout=0, kill_grace=10, state=RUNNING)
    assert job.stop() is True
    stopping = JobState(phase=Phase.TERM_DUE, slurm_state="RUNNING", cause="stop")
    assert (job.state, job.due()) == (stopping, -math.inf)
    assert job.stop() is False
    assert job.state == stopping
    assert job.tick(5.0) == Signal("TERM")
    job.sent(5.0)
    assert job.state == JobState(
        phase=Phase.TERM_SENT, slurm_state="RUNNING", cause="stop", term_at=5.0
    )
    job.ended("CANCELLED")
    ended = JobState(phase=Phase.ENDED, slurm_state="CANCELLED", cause="stop", term_at=5.0)
    assert job.state == ended
    assert job.stop() is False
    assert job.state == ended
    assert (job.timed_out, job.interrupted) == (False, True)


def test_a_stop_before_the_deadline_is_a_stop_not_a_timeout() -> None:
    """Stopped first, then past the deadline: still interrupted (the cause is set once)."""
    job = SlurmJob(timeout=60, kill_grace=5, state=JobState(slurm_state="RUNNING", deadline=78.0))
    job.stop()
    assert job.tick(100.0) == Signal("TERM")
    assert job.state == JobState(
        phase=Phase.TERM_DUE, slurm_state="RUNNING", deadline=78.0, cause="stop"
    )


def test_a_pending_job_is_cancelled_outright() -> None:
    """Last seen pending: the TERM is marked pending (cancel it before it starts); once seen
    running, it is not."""
    job = SlurmJob(timeout=0, kill_grace=10)
    job.stop()
    assert job.tick(0.0) == Signal("TERM", pending=True)
    job.seen("RUNNING", 1.0, now=0.5)
    assert job.tick(1.0) == Signal("TERM", pending=False)
    assert job.state == JobState(phase=Phase.TERM_DUE, slurm_state="RUNNING", cause="stop")


def test_a_failed_scancel_is_tried_again_later() -> None:
    """Slurm unreachable: the signal stays due, not before now + retry_in, for TERM and KILL."""
    job = SlurmJob(timeout=0, kill_grace=10, state=RUNNING)
    job.stop()
    job.send_failed(50.0, retry_in=5.0)
    retrying = JobState(phase=Phase.TERM_DUE, slurm_state="RUNNING", cause="stop", retry_at=55.0)
    assert (job.state, job.due(), job.tick(54.9)) == (retrying, 55.0, None)
    assert job.state == retrying
    assert job.tick(55.0) == Signal("TERM")
    job.sent(55.0)
    term_sent = JobState(
        phase=Phase.TERM_SENT, slurm_state="RUNNING", cause="stop", term_at=55.0, retry_at=55.0
    )
    assert (job.state, job.due()) == (term_sent, 65.0)
    assert job.tick(65.0) == Signal("KILL")
    job.send_failed(65.0, retry_in=5.0)
    assert job.state == JobState(
        phase=Phase.KILL_DUE, slurm_state="RUNNING", cause="stop", term_at=55.0, retry_at=70.0
    )
    assert (job.due(), job.tick(69.0), job.tick(70.0)) == (70.0, None, Signal("KILL"))


def test_slurm_forgetting_a_job_keeps_its_last_seen_state() -> None:
    """An end without a Slurm record (None) keeps the state last seen for ``status``."""
    job = SlurmJob(timeout=0, kill_grace=10, state=RUNNING)
    job.ended(None)
    assert job.state == JobState(phase=Phase.ENDED, slurm_state="RUNNING")


def test_events_the_table_does_not_list_are_refused() -> None:
    """A signal reported sent while none was due, or a sighting after the end, is a bug of the
    caller: JobStateError naming the phase and the event."""
    job = SlurmJob(timeout=0, kill_grace=10)
    with pytest.raises(JobStateError, match="phase waiting cannot take event sent"):
        job.sent(1.0)
    job.ended("COMPLETED")
    with pytest.raises(JobStateError, match="phase ended cannot take event seen"):
        job.seen("RUNNING", 1.0, now=2.0)
    assert job.state == JobState(phase=Phase.ENDED, slurm_state="COMPLETED")


def test_the_table_covers_every_phase_and_every_end() -> None:
    """Every phase has its row; every phase but ENDED can end and be seen; only a stop is
    taken after the end."""
    assert set(TRANSITIONS) == set(Phase)
    for phase, row in TRANSITIONS.items():
        if phase is Phase.ENDED:
            assert row == {Event.STOP: Phase.ENDED}
        else:
            assert row[Event.ENDED] is Phase.ENDED and row[Event.SEEN] is phase


def test_pending_jobs_are_cancelled_before_any_running_job_is_signalled() -> None:
    """Several jobs due at once: the pending ones are cancelled outright in one scancel, and
    signalled, before any running one, which keep their order."""
    due = [
        ("11", Signal("TERM")),
        ("12", Signal("TERM", pending=True)),
        ("13", Signal("KILL")),
        ("14", Signal("TERM", pending=True)),
    ]
    assert cancel_commands(due) == [
        Scancel(("--state=PENDING", "12", "14")),
        Scancel(("--signal=TERM", "--full", "12"), "12"),
        Scancel(("--signal=TERM", "--full", "14"), "14"),
        Scancel(("--signal=TERM", "--full", "11"), "11"),
        Scancel(("--signal=KILL", "--full", "13"), "13"),
    ]


def test_no_pending_job_no_outright_cancel() -> None:
    """Only running jobs: only their signals; nothing due: no scancel at all."""
    assert cancel_commands([("7", Signal("KILL"))]) == [
        Scancel(("--signal=KILL", "--full", "7"), "7")
    ]
    assert cancel_commands([]) == []


def test_the_next_round_is_the_next_poll_or_an_earlier_due_signal() -> None:
    """The poller wakes at last poll + interval, or sooner for a job's deadline or grace."""
    assert round_due(100.0, 5.0, []) == 105.0
    assert round_due(100.0, 5.0, [None, 107.0]) == 105.0
    assert round_due(100.0, 5.0, [None, 103.0, 104.0]) == 103.0
    assert round_due(-math.inf, 5.0, [None]) == -math.inf  # never polled: at once
