"""What a Slurm job's traces mean: pure (SPEC section 12).

Owns three judgements: what ``scontrol show job`` says of a job that squeue
no longer lists (still alive, ended, or unknown because Slurm could not be
asked); whether a job left no trace at all (Slurm forgot it and the wrapper
recorded no exit status: the attempt is ``interrupted`` and runs again); and
the ``RawResult`` of an ended job from its end state, its recorded exit
status and its log's tail.

What it must never do: run a command, read a file or the clock, or decide
what an outcome means for the batch (``classify`` does, from the
``RawResult``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from batchd.agents import CodexFacts
from batchd.classify import RawResult
from batchd.engines.slurm_protocol import END_STATES, JobInfo, Reply, job_name, parse_show_job


@dataclass(frozen=True)
class Unasked:
    """Slurm could not be asked (slurmctld unreachable): nothing is known of the job."""

    why: str


@dataclass(frozen=True)
class Alive:
    """Slurm knows the job, pending or running (or left squeue but not ended yet)."""

    state: str
    run_time: float | None


@dataclass(frozen=True)
class Ended:
    """The job runs no more: Slurm's record of it, or None when Slurm no longer knows it."""

    info: JobInfo | None


Sighting = Unasked | Alive | Ended


def read_show_job(reply: Reply, run_id: str) -> Sighting:
    """What ``scontrol show job -o ID`` says of the job submitted for ``run_id``.

    An id that Slurm does not know, or that now names another job (the name
    carries the run id), is ``Ended(None)``: ours is gone from Slurm.
    """
    if not reply.answered:
        return Unasked(reply.stderr)
    info = parse_show_job(reply.stdout) if reply.returncode == 0 else None
    if info is not None and info.name != job_name(run_id):
        info = None
    if info is not None and info.state not in END_STATES:
        return Alive(info.state, info.run_time)
    return Ended(info)


def left_no_trace(info: JobInfo | None, status: int | None) -> bool:
    """Slurm has forgotten the job and the wrapper recorded no exit status: how it ended is
    unknown (the program never ran, or its node died), so the attempt runs again."""
    return info is None and status is None


ReattachPlan = Literal["follow", "judge", "gone"]


def reattach_plan(sighting: Sighting, status: int | None) -> ReattachPlan:
    """After a daemon restart: ``follow`` a job that may still run (also when Slurm cannot
    be asked: the poller decides once it can), ``judge`` one that ended with a trace, or
    ``gone``: no trace, nothing to wait on."""
    if isinstance(sighting, Ended):
        return "gone" if left_no_trace(sighting.info, status) else "judge"
    return "follow"


def end_result(
    info: JobInfo | None,
    status: int | None,
    *,
    timed_out: bool,
    interrupted: bool,
    tail: bytes,
    output_bytes: int,
    codex: CodexFacts | None = None,
) -> RawResult:
    """What an ended job leaves for ``classify``: the exit status the wrapper recorded wins
    over Slurm's (it is the program's, not the wrapper's); Slurm's signal counts only when
    no status was recorded; no trace at all is ``interrupted`` unless batchd timed it out."""
    exit_code = status if status is not None else info.exit_code if info is not None else None
    signal = info.signal if info is not None and status is None else None
    return RawResult(
        exit_code=exit_code,
        signal=signal,
        timed_out=timed_out,
        interrupted=interrupted or (left_no_trace(info, status) and not timed_out),
        stdout_tail=tail,
        stderr_tail=tail,
        output_bytes=output_bytes,
        cluster_state=info.state if info is not None else None,
        codex=codex,
    )
