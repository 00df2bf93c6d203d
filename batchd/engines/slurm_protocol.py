"""What batchd says to Slurm and what Slurm says back: pure (SPEC section 12).

Owns the words of the conversation with Slurm's client commands: the
``sbatch`` options of an attempt, the wrapper script's text, the job's name,
``--time`` from a timeout, and the parsing of ``sbatch --parsable``,
``squeue`` and ``scontrol show job`` output and of the wrapper's exit-status
file; and the end states after which a job runs no more.

What it must never do: run a command, read a file or the clock. The engine
(``engines/slurm.py``) runs the commands and hands their text here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from batchd.engines import LaunchSpec

JOB_NAME_PREFIX = "batchd-"  # + the attempt's BATCHD_RUN_ID
WRAPPER_NAME = "slurm-job.sh"
# States after which a job runs no more (squeue no longer lists it). COMPLETING is not one.
END_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)
# States of a job that has not started: its running time does not count yet.
NOT_STARTED = frozenset({"PENDING", "CONFIGURING"})

# Runs "$@" as it is: the shell never evaluates an argument. The exit status goes to a
# file named after the log and this job's id, so a stale file of another job can never be
# taken for this one's. On scancel Slurm signals every process of the job: the trap keeps
# the wrapper alive until the program has exited, so its status is recorded too.
WRAPPER = """\
#!/bin/sh
# Written by batchd (batchd/engines/slurm.py); rewritten at each start. Do not edit.
# Usage: sbatch ... slurm-job.sh ATTEMPT_LOG PROGRAM [ARG...]
umask 077
log=$1
shift
status="$log.slurm-$SLURM_JOB_ID.exit"
trap 'terminated=1' TERM
"$@" </dev/null
code=$?
printf '%s\\n' "$code" >"$status.tmp" && mv -f "$status.tmp" "$status"
exit "$code"
"""

SUBMIT_HINT = "check slurm.sbatch_args and that slurmctld answers (sinfo), then resume"


@dataclass(frozen=True)
class Reply:
    """What one Slurm client command answered (-1: it could not be run)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def unknown_job(self) -> bool:
        """Slurm's answer for a job id it does not know (never submitted, or forgotten)."""
        return "Invalid job id" in self.stderr

    @property
    def answered(self) -> bool:
        """Slurm was asked and answered: success, or "no such job"."""
        return self.returncode == 0 or self.unknown_job


def job_name(run_id: str) -> str:
    return JOB_NAME_PREFIX + run_id


def status_path(log_path: Path, job_id: str) -> Path:
    """The file where the wrapper records the exit status of job ``job_id``."""
    return log_path.with_name(f"{log_path.name}.slurm-{job_id}.exit")


def time_limit_minutes(timeout: float) -> int | None:
    """``--time`` for an attempt timeout in seconds: whole minutes rounded up; None for none."""
    return max(1, math.ceil(timeout / 60)) if timeout > 0 else None


def sbatch_argv(sbatch_args: Sequence[str], spec: LaunchSpec) -> list[str]:
    """The options of ``sbatch`` for one attempt (the wrapper and the program follow).

    ``slurm.sbatch_args`` come first: where they name an option of ours
    (``--job-name``, ``--output``, ...), ours wins (sbatch keeps the last).
    """
    argv = [
        "--parsable",
        *sbatch_args,
        f"--job-name={job_name(spec.run_id)}",
        f"--chdir={spec.cwd}",
        f"--output={spec.log_path}",
        "--open-mode=append",
        "--export=ALL",  # the job's environment is sbatch's: LaunchSpec.env
    ]
    minutes = time_limit_minutes(spec.timeout)
    if minutes is not None:
        argv.append(f"--time={minutes}")
    return argv


def log_path_problem(log_path: Path) -> str | None:
    """Why sbatch cannot be given this attempt log, or None."""
    if "%" in str(log_path):
        return (
            f"the attempt log {log_path} contains '%', which sbatch would expand: "
            "choose a state_dir without '%'"
        )
    return None


def parse_sbatch(reply: Reply) -> str | None:
    """The job id ``sbatch --parsable`` printed (``ID`` or ``ID;CLUSTER``), or None."""
    job_id = reply.stdout.strip().split(";")[0]
    return job_id if reply.returncode == 0 and job_id.isdigit() else None


def parse_duration(text: str) -> float | None:
    """Slurm's ``[days-][hours:]minutes:seconds`` (squeue ``%M``, scontrol ``RunTime``)."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return None
    seconds = sum(int(p) * 60**i for i, p in enumerate(reversed(parts)))
    return float(seconds + (int(days) * 86400 if days else 0))


@dataclass(frozen=True)
class Listed:
    """One line of ``squeue -o '%i|%T|%M'``: a job's state and how long it has run."""

    state: str
    run_time: float | None

    @property
    def alive(self) -> bool:
        """Not in an end state (squeue may still list a job that has just ended)."""
        return self.state not in END_STATES


SQUEUE_FORMAT = "%i|%T|%M"


def parse_squeue(text: str) -> dict[str, Listed]:
    """Job id -> state and running time, from ``squeue -h -o SQUEUE_FORMAT``."""
    listed: dict[str, Listed] = {}
    for line in text.splitlines():
        job_id, _, rest = line.partition("|")
        state, _, used = rest.partition("|")
        listed[job_id] = Listed(state, parse_duration(used))
    return listed


@dataclass(frozen=True)
class JobInfo:
    """What ``scontrol show job`` says of one job."""

    state: str
    name: str
    exit_code: int | None
    signal: int | None
    run_time: float | None


_FIELD_RE = re.compile(r"(?:^|\s)(JobName|JobState|ExitCode|RunTime)=(\S*)")


def parse_show_job(text: str) -> JobInfo | None:
    """The first job of ``scontrol show job -o`` output (first occurrence of each key wins)."""
    fields: dict[str, str] = {}
    for key, value in _FIELD_RE.findall(text):
        fields.setdefault(key, value)
    if "JobState" not in fields:
        return None
    code, _, sig = fields.get("ExitCode", "").partition(":")
    exit_code = int(code) if code.isdigit() else None
    signal = int(sig) if sig.isdigit() and int(sig) != 0 else None
    return JobInfo(
        state=fields["JobState"],
        name=fields.get("JobName", ""),
        exit_code=None if signal is not None else exit_code,
        signal=signal,
        run_time=parse_duration(fields.get("RunTime", "")),
    )


def parse_status(text: str) -> int | None:
    """The exit status the wrapper recorded (a number and a newline), or None."""
    value = text.strip()
    return int(value) if value.isdigit() else None


ORPHAN_FORMAT = "%i|%j"


def orphans(listing: str, run_id_prefix: str, known: Iterable[str]) -> list[tuple[str, str]]:
    """(job id, name) of each job in ``squeue -o ORPHAN_FORMAT`` output that was submitted
    for a run of this state dir (``run_id_prefix``) that no attempt records (``known``)."""
    known = set(known)
    found = []
    for line in listing.splitlines():
        job_id, _, name = line.partition("|")
        run_id = name.removeprefix(JOB_NAME_PREFIX)
        if name != run_id and run_id.startswith(run_id_prefix) and run_id not in known:
            found.append((job_id, name))
    return found
