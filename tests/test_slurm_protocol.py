"""What batchd says to Slurm and what Slurm says back (engines/slurm_protocol.py), and what
a job's traces mean (engines/slurm_outcome.py). Pure: Slurm's own output, no cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchd.classify import Classifier
from batchd.engines import LaunchSpec
from batchd.engines.slurm_outcome import (
    Alive,
    Ended,
    Traces,
    Unasked,
    end_result,
    left_no_trace,
    read_show_job,
    reattach_plan,
)
from batchd.engines.slurm_protocol import (
    END_STATES,
    JobInfo,
    Listed,
    Reply,
    orphans,
    parse_duration,
    parse_sbatch,
    parse_show_job,
    parse_squeue,
    parse_status,
    sbatch_argv,
    status_path,
    time_limit_minutes,
)
from batchd.knownfailures import CLUSTER_END_STATES

# Slurm 22.05's own words, captured from the private test cluster.
PREEMPTED = (
    "JobId=3 JobName=batchd-r1 UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901757 Nice=0 Account=(null) QOS=(null) JobState=PREEMPTED Reason=None "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 "
    "RunTime=00:00:02 TimeLimit=365-00:00:00 TimeMin=N/A Partition=debug NodeList=vm "
    "Command=/tmp/victim.sh WorkDir=/tmp StdErr=/tmp/victim.out StdIn=/dev/null "
    "StdOut=/tmp/victim.out Power= \n"
)
HELD = (
    "JobId=5 JobName=batchd-r1 UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=0 "
    "Nice=0 Account=(null) QOS=(null) JobState=PENDING Reason=JobHeldUser Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 "
    "TimeLimit=UNLIMITED TimeMin=N/A WorkDir=/tmp StdErr=/dev/null Power= \n"
)
UNKNOWN = "slurm_load_jobs error: Invalid job id specified"
# SPEC section 12 names these; Slurm 22.05 has these more after which a job runs no more.
SPEC_END_STATES = ("TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY", "CANCELLED")
OTHER_END_STATES = ("COMPLETED", "FAILED", "DEADLINE", "REVOKED", "SPECIAL_EXIT")


def show(state: str, name: str = "batchd-r1", code: str = "0:0") -> Reply:
    line = f"JobId=9 JobName={name} JobState={state} RunTime=00:01:02 ExitCode={code}\n"
    return Reply(0, line, "")


def test_time_limit_is_whole_minutes_rounded_up() -> None:
    """--time: 0 means none; any part of a minute counts as a minute."""
    assert [time_limit_minutes(t) for t in (0, 0.5, 60, 61, 7200)] == [None, 1, 1, 2, 120]


def test_slurm_durations_parse() -> None:
    """squeue %M and scontrol RunTime: [days-][hours:]minutes:seconds."""
    cases = {"0:00": 0, "1:05": 65, "2:00:01": 7201, "1-00:00:10": 86410, "": None, "x:1": None}
    assert {k: parse_duration(k) for k in cases} == cases


def test_show_job_output_parses() -> None:
    """State, name, exit code and signal come from scontrol's one-line output."""
    line = (
        "JobId=7 JobName=batchd-r1 UserId=root(0) JobState=FAILED Reason=NonZeroExitCode "
        "RunTime=00:01:02 ExitCode=3:0 WorkDir=/a b JobState=COMPLETED\n"
    )
    assert parse_show_job(line) == JobInfo("FAILED", "batchd-r1", 3, None, 62.0)
    killed = parse_show_job("JobId=8 JobName=x JobState=CANCELLED ExitCode=0:9 RunTime=0:01")
    assert killed == JobInfo("CANCELLED", "x", None, 9, 1.0)
    assert parse_show_job(PREEMPTED) == JobInfo("PREEMPTED", "batchd-r1", 0, None, 2.0)
    assert parse_show_job(UNKNOWN) is None


def test_our_sbatch_options_come_after_the_users(tmp_path: Path) -> None:
    """slurm.sbatch_args cannot rename the job or move its log: sbatch keeps the last value."""
    spec = LaunchSpec(
        run_id="r1", argv=["a"], env={}, cwd="/w", log_path=tmp_path / "l", timeout=90
    )
    argv = sbatch_argv(["--partition=gpu", "--job-name=mine"], spec)
    assert argv == [
        "--parsable",
        "--partition=gpu",
        "--job-name=mine",
        "--job-name=batchd-r1",
        "--chdir=/w",
        f"--output={tmp_path / 'l'}",
        "--open-mode=append",
        "--export=ALL",
        "--time=2",
    ]
    assert status_path(tmp_path / "l", "42") == tmp_path / "l.slurm-42.exit"


def test_sbatch_squeue_and_status_file_parse() -> None:
    """sbatch --parsable gives the id (with or without a cluster name); squeue lines give state
    and running time; the status file holds a number."""
    assert parse_sbatch(Reply(0, "42\n", "")) == "42"
    assert parse_sbatch(Reply(0, "42;cluster\n", "")) == "42"
    assert parse_sbatch(Reply(1, "", "sbatch: error: invalid partition")) is None
    assert parse_sbatch(Reply(0, "Submitted batch job 42\n", "")) is None
    listed = parse_squeue("3|RUNNING|0:02\n5|PENDING|0:00\n6|COMPLETING|1:00:00\n")
    assert listed == {
        "3": Listed("RUNNING", 2.0),
        "5": Listed("PENDING", 0.0),
        "6": Listed("COMPLETING", 3600.0),
    }
    assert [parse_status(t) for t in ("0\n", "143\n", "", "x\n", "-1\n")] == [
        0,
        143,
        None,
        None,
        None,
    ]


def test_orphans_are_jobs_of_this_state_dir_that_no_attempt_records() -> None:
    """Only names batchd-<prefix>... whose run id is not known; other prefixes and other
    names are left alone."""
    listing = "1|batchd-k1-a-1\n2|batchd-k1-b-1\n3|batchd-k2-a-1\n4|k1-c-1\n5|batchd-k1-c-1\n"
    assert orphans(listing, "k1-", {"k1-a-1", "k1-c-1"}) == [("2", "batchd-k1-b-1")]


def test_every_end_state_the_spec_names_ends_the_job() -> None:
    """Each of SPEC 12's end states (PREEMPTED included) and Slurm's other ends is an end
    state, and so is every state classify judges; a job in one is Ended, not Alive."""
    assert set(SPEC_END_STATES) | set(OTHER_END_STATES) == END_STATES
    assert set(CLUSTER_END_STATES) <= END_STATES
    for state in END_STATES:
        info = JobInfo(state, "batchd-r1", 0, None, 62.0)
        assert read_show_job(show(state), "r1") == Ended(info)
        assert not Listed(state, 62.0).alive
    assert all(Listed(s, 1.0).alive for s in ("PENDING", "RUNNING", "COMPLETING", "SUSPENDED"))


def test_a_preempted_job_is_ended_and_judged_transient() -> None:
    """Slurm's PREEMPTED record: the job ended; classify calls it a transient failure."""
    sighting = read_show_job(Reply(0, PREEMPTED, ""), "r1")
    assert sighting == Ended(JobInfo("PREEMPTED", "batchd-r1", 0, None, 2.0))
    assert isinstance(sighting, Ended)
    raw = end_result(sighting.info, Traces(status=143), cause=None)
    verdict = Classifier.build().judge(raw, "auto")
    assert (verdict.outcome, verdict.failure_type) == ("failed", "transient")


def test_what_scontrol_says_of_a_job() -> None:
    """Pending, running or completing: Alive; an unknown id, or one now naming another job:
    Ended(None); Slurm not answering: Unasked."""
    assert read_show_job(Reply(0, HELD, ""), "r1") == Alive("PENDING", 0.0)
    assert read_show_job(show("COMPLETING"), "r1") == Alive("COMPLETING", 62.0)
    assert read_show_job(Reply(1, "", UNKNOWN), "r1") == Ended(None)
    assert read_show_job(show("RUNNING", name="batchd-other"), "r1") == Ended(None)
    assert read_show_job(Reply(0, "garbage", ""), "r1") == Ended(None)
    down = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    assert read_show_job(Reply(1, "", down), "r1") == Unasked(down)
    assert read_show_job(Reply(-1, "", "scontrol: timed out"), "r1") == Unasked(
        "scontrol: timed out"
    )


def test_a_job_that_left_no_trace_is_interrupted() -> None:
    """Not in squeue, not in scontrol, no exit-status file: interrupted (runs again), unless
    batchd timed it out; a status file or a Slurm record is a trace."""
    assert left_no_trace(None, None)
    assert not left_no_trace(None, 0) and not left_no_trace(
        JobInfo("FAILED", "x", 1, None, 1), None
    )
    raw = end_result(None, Traces(tail=b"t", output_bytes=1), cause=None)
    assert (raw.interrupted, raw.timed_out, raw.exit_code, raw.cluster_state) == (
        True,
        False,
        None,
        None,
    )
    assert Classifier.build().judge(raw, "auto").outcome == "interrupted"
    timed = end_result(None, Traces(), cause="timeout")
    assert (timed.interrupted, timed.timed_out, timed.stalled) == (False, True, False)
    stalled = end_result(None, Traces(), cause="stall")
    assert (stalled.interrupted, stalled.timed_out, stalled.stalled) == (False, False, True)
    assert end_result(None, Traces(status=0), cause=None).interrupted is False


@pytest.mark.parametrize(
    ("info", "status", "expected"),
    [
        # The recorded status is the program's: it wins over Slurm's (the wrapper's).
        (JobInfo("FAILED", "x", 1, None, 5.0), 3, (3, None, "FAILED")),
        # No status recorded: Slurm's exit code, or its signal.
        (JobInfo("FAILED", "x", 2, None, 5.0), None, (2, None, "FAILED")),
        (JobInfo("CANCELLED", "x", None, 9, 5.0), None, (None, 9, "CANCELLED")),
        # A signal Slurm reports does not count once the program's status is known.
        (JobInfo("CANCELLED", "x", None, 15, 5.0), 143, (143, None, "CANCELLED")),
        # Slurm forgot the job; the status file alone decides.
        (None, 4, (4, None, None)),
    ],
)
def test_the_end_state_and_the_recorded_status_make_the_result(
    info: JobInfo | None, status: int | None, expected: tuple[int | None, int | None, str | None]
) -> None:
    """Exit code, signal and cluster state of an ended job, from Slurm and the status file."""
    raw = end_result(info, Traces(status=status, tail=b"x", output_bytes=9), cause=None)
    assert (raw.exit_code, raw.signal, raw.cluster_state) == expected
    assert (raw.stdout_tail, raw.stderr_tail, raw.output_bytes) == (b"x", b"x", 9)
    assert (raw.interrupted, raw.timed_out) == (False, False)


def test_what_a_restart_does_with_a_recorded_job() -> None:
    """Alive or Slurm unreachable: follow it; ended with a trace: judge it; no trace: gone."""
    assert reattach_plan(Alive("RUNNING", 3.0), None) == "follow"
    assert reattach_plan(Unasked("down"), None) == "follow"
    assert reattach_plan(Ended(JobInfo("COMPLETED", "x", 0, None, 1.0)), None) == "judge"
    assert reattach_plan(Ended(None), 0) == "judge"
    assert reattach_plan(Ended(None), None) == "gone"
