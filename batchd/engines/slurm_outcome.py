"""What a Slurm job's traces mean: pure (SPEC section 12).

Owns three judgements: what ``scontrol show job`` says of a job that squeue
no longer lists (still alive, ended, or unknown because Slurm could not be
asked); whether a job left no trace at all (Slurm forgot it and the wrapper
recorded no exit status: the attempt is ``interrupted`` and runs again); and
the ``RawResult`` of an ended job from its end state, why batchd cancelled
it (a stop, its timeout, a stall), its recorded exit status, its log's tail,
and the check that ran after the program inside the job (``job_check``).

What it must never do: run a command, read a file or the clock, or decide
what an outcome means for the batch (``classify`` does, from the
``RawResult``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from batchd.agents import CodexFacts
from batchd.classify import JobCheck, RawResult
from batchd.engines.slurm_job import Cause
from batchd.engines.slurm_protocol import (
    END_STATES,
    CheckTrace,
    JobInfo,
    Reply,
    job_name,
    parse_show_job,
)
from batchd.knownfailures import CLUSTER_END_STATES


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


@dataclass(frozen=True)
class Traces:
    """What an ended job left on the shared file system (the engine reads it)."""

    status: int | None = None  # the program's exit status, as the wrapper recorded it
    check: CheckTrace | None = None  # the check's record: None when no check started
    tail: bytes = b""  # the agent's output: the log's last bytes up to the check's header
    output_bytes: int = 0  # the agent's output, in bytes
    check_tail: bytes = b""  # the check's output: the log's last bytes after its header
    codex: CodexFacts | None = None


# timeout(1)'s exit status when it stopped the check: TERM did it (124), or KILL (128 + 9).
TIMEOUT_CODES = frozenset({124, 137})


def end_result(
    info: JobInfo | None, traces: Traces, *, cause: Cause | None, check_timeout: float = 0.0
) -> RawResult:
    """What an ended job leaves for ``classify``: the exit status the wrapper recorded wins
    over Slurm's (it is the program's, not the wrapper's); Slurm's signal counts only when
    no status was recorded; no trace at all is ``interrupted`` unless batchd timed it out
    (or found it stalled). ``cause``: why batchd cancelled it, if it did.

    Once the check has started, the program had exited 0 and the job's end state is the
    check's: it goes with the check (``job_check``), not with the agent's verdict.
    """
    status, check = traces.status, traces.check
    exit_code = status if status is not None else info.exit_code if info is not None else None
    signal = info.signal if info is not None and status is None else None
    state = info.state if info is not None else None
    return RawResult(
        exit_code=exit_code,
        signal=signal,
        timed_out=cause == "timeout",
        stalled=cause == "stall",
        interrupted=cause == "stop" or (left_no_trace(info, status) and cause is None),
        stdout_tail=traces.tail,
        stderr_tail=traces.tail,
        output_bytes=traces.output_bytes,
        cluster_state=state if check is None else None,
        codex=traces.codex,
        check=job_check(state, check, traces.check_tail, check_timeout) if check else None,
    )


def job_check(state: str | None, trace: CheckTrace, tail: bytes, timeout: float) -> JobCheck:
    """How the check inside the job ended, from the wrapper's record and the job's end
    ``state``: its exit status; timed out (timeout(1)'s status, at its limit); or cut short:
    no end recorded, or a failure while the cluster ended the job (a cancel, a preemption
    signals the check too): the job ended under it, and Slurm's end state says why."""
    code = trace.exit_code if trace.ended is not None else None
    if code is None or (code != 0 and state in CLUSTER_END_STATES):
        return JobCheck(code, False, trace.duration_s, timeout, tail, cut_short=cut_short(state))
    timed_out = timeout > 0 and code in TIMEOUT_CODES and trace.duration_s >= timeout - 0.05
    return JobCheck(code, timed_out, trace.duration_s, timeout, tail)


def cut_short(state: str | None) -> str:
    """Why a check ended with its job: the job's end state in the words of ``classify``."""
    if state in CLUSTER_END_STATES:
        return CLUSTER_END_STATES[state][2]
    return f"the job ended ({state}) before the check did" if state else "the job ended first"
