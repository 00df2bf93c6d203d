"""What batchd says to Slurm and what Slurm says back: pure (SPEC section 12).

Owns the words of the conversation with Slurm's client commands: the
``sbatch`` options of an attempt, the wrapper script's text and arguments
(the program, and the check that runs after it in the same job), the job's
name, ``--time`` from the timeouts, and the parsing of ``sbatch --parsable``,
``squeue`` and ``scontrol show job`` output and of the wrapper's exit-status
and check files; and the end states after which a job runs no more.

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
from batchd.verify import header_line

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

# Runs the program as it is: the shell never evaluates an argument. The exit status goes
# to a file named after the log and this job's id, so a stale file of another job can
# never be taken for this one's. On scancel Slurm signals every process of the job: the
# trap keeps the wrapper alive until the program has exited, so its status is recorded
# too. When the program exited 0 (and was not stopped) and a check is given, the check
# runs next, in the same job (SPEC 14): its header line goes into the log (the job's
# output), it runs with BATCHD_VERIFY=1 under timeout(1) (its own process group, TERM at
# the limit, KILL after the grace), and a second file records where the agent's output
# ends, where the check's begins and when it started ("END FROM START"), then also when it
# ended and its exit status ("END FROM START ENDED CODE"). The check's argv is the N
# arguments after N; the program's, the rest. Both reach "$@" only through shift and set.
WRAPPER = """\
#!/bin/sh
# Written by batchd (batchd/engines/slurm.py); rewritten at each start. Do not edit.
# Usage: sbatch ... slurm-job.sh LOG LIMIT GRACE HEADER N [CHECK_ARG]... PROGRAM [ARG]...
umask 077
log=$1 limit=$2 grace=$3 header=$4 n=$5
shift 5
status="$log.slurm-$SLURM_JOB_ID.exit"
check="$log.slurm-$SLURM_JOB_ID.check"
trap 'terminated=1' TERM
record() { printf '%s\\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; }
program() { shift "$(($1 + 1))"; "$@" </dev/null; }
run_check() {
  keep=$1 i=0
  shift
  for arg do
    shift
    if [ "$i" -lt "$keep" ]; then set -- "$@" "$arg"; fi
    i=$((i + 1))
  done
  end=$(wc -c <"$log")
  if [ -s "$log" ] && [ -n "$(tail -c 1 "$log")" ]; then printf '\\n'; fi
  printf '%s\\n' "$header"
  from=$(wc -c <"$log")
  began=$(date +%s.%N)
  record "$check" "$end $from $began"
  BATCHD_VERIFY=1 timeout -k "$grace" "$limit" "$@" </dev/null
  code=$?
  record "$check" "$end $from $began $(date +%s.%N) $code"
  return "$code"
}
program "$n" "$@"
code=$?
record "$status" "$code"
if [ "$code" -eq 0 ] && [ "$n" -gt 0 ] && [ -z "$terminated" ]; then
  run_check "$n" "$@"
  code=$?
fi
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


def check_path(log_path: Path, job_id: str) -> Path:
    """The file where the wrapper records the check of job ``job_id`` (``CheckTrace``)."""
    return log_path.with_name(f"{log_path.name}.slurm-{job_id}.check")


def seconds_arg(seconds: float) -> str:
    """Seconds as timeout(1) reads them: ``1800``, ``2.5`` (never an exponent)."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def wrapper_args(spec: LaunchSpec) -> list[str]:
    """The wrapper's arguments for one attempt: the log, the check's time limit, kill_grace,
    the check's header line, the check's argv with its length first, then the program."""
    check = list(spec.check_argv)
    header = header_line(check) if check else ""
    limit, grace = seconds_arg(spec.check_timeout), seconds_arg(spec.kill_grace)
    return [str(spec.log_path), limit, grace, header, str(len(check)), *check, *spec.argv]


def job_seconds(spec: LaunchSpec) -> float:
    """The job's time in seconds (0: none): runner.timeout, plus the check's time limit and
    its kill_grace when the check runs in the job; none when either has none."""
    if spec.timeout <= 0:
        return 0.0
    if not spec.check_argv:
        return spec.timeout
    if spec.check_timeout <= 0:
        return 0.0
    return spec.timeout + spec.check_timeout + spec.kill_grace


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
    minutes = time_limit_minutes(job_seconds(spec))
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


@dataclass(frozen=True)
class CheckTrace:
    """What the wrapper recorded of the check it ran after the program (``check_path``)."""

    agent_end: int  # the log's size when the program had ended: its output ends there
    output_from: int  # where the check's output begins (after its header line)
    began: float | None  # wall-clock seconds (None: unreadable)
    ended: float | None = None  # None: the check never recorded its end
    exit_code: int | None = None

    @property
    def duration_s(self) -> float:
        if self.began is None or self.ended is None:
            return 0.0
        return max(0.0, self.ended - self.began)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_check(text: str) -> CheckTrace | None:
    """The check file: ``END FROM BEGAN`` while it runs, ``END FROM BEGAN ENDED CODE`` once
    it ended; None when unreadable (no check ran, as far as anyone can tell)."""
    fields = text.split()
    if len(fields) not in (3, 5) or not (fields[0].isdigit() and fields[1].isdigit()):
        return None
    end, begin = int(fields[0]), int(fields[1])
    began = _number(fields[2])
    if len(fields) == 3:
        return CheckTrace(end, begin, began)
    code = int(fields[4]) if fields[4].isdigit() else None
    return CheckTrace(end, begin, began, _number(fields[3]), code)


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
