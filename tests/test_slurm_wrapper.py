"""The check inside a Slurm job (SPEC 14) and what its traces mean, without a cluster.

The wrapper's arguments and the job's time (engines/slurm_protocol.py), the check's
record and how it ended (engines/slurm_outcome.py), its wording (verify.from_job):
pure, Slurm's and the wrapper's own text. Then the wrapper script itself, run by a
real ``sh`` as Slurm would run it (``SLURM_JOB_ID`` set, its output appended to the
log): arguments never evaluated, the check only after a program that exited 0, its
header, its time limit, its record.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from batchd import procfs, verify
from batchd.classify import Classifier, JobCheck
from batchd.engines import LaunchSpec
from batchd.engines.slurm_outcome import Traces, cut_short, end_result, job_check
from batchd.engines.slurm_protocol import (
    WRAPPER,
    CheckTrace,
    JobInfo,
    check_path,
    parse_check,
    sbatch_argv,
    seconds_arg,
    status_path,
    wrapper_args,
)
from tests.harness import poll

CHECK = ("sh", "-c", "make test")


def spec(tmp_path: Path, **kw: object) -> LaunchSpec:
    base: dict[str, object] = dict(
        run_id="r1", argv=["agent", "x $(y)"], env={}, cwd="/w", log_path=tmp_path / "0.1.log"
    )
    return LaunchSpec(**{**base, **kw})  # type: ignore[arg-type]


def test_the_wrapper_gets_the_check_before_the_program(tmp_path: Path) -> None:
    """The log, verify.timeout, kill_grace, the header line, the check's length and argv,
    then the program: one argument each, as they are; no check: length 0."""
    with_check = spec(tmp_path, check_argv=CHECK, check_timeout=1800.0, kill_grace=2.5)
    assert wrapper_args(with_check) == [
        str(tmp_path / "0.1.log"),
        "1800",
        "2.5",
        "--- verify: sh -c 'make test' ---",
        "3",
        *CHECK,
        "agent",
        "x $(y)",
    ]
    plain = wrapper_args(spec(tmp_path))
    assert plain == [str(tmp_path / "0.1.log"), "0", "10", "", "0", "agent", "x $(y)"]
    assert [seconds_arg(s) for s in (0, 0.25, 1e6, 7200.0)] == ["0", "0.25", "1000000", "7200"]


@pytest.mark.parametrize(
    ("timeout", "check", "check_timeout", "time"),
    [
        (90, (), 0, "--time=2"),  # runner.timeout alone, in minutes rounded up
        (90, CHECK, 1800, "--time=32"),  # plus verify.timeout and kill_grace (10 s)
        (90, CHECK, 0, None),  # a check without a limit: the job has none either
        (0, CHECK, 1800, None),  # no runner.timeout: none
    ],
)
def test_the_jobs_time_covers_the_check(
    tmp_path: Path, timeout: float, check: tuple[str, ...], check_timeout: float, time: str | None
) -> None:
    """Slurm's --time holds the agent's runner.timeout and the check's verify.timeout (plus
    kill_grace): the cluster never ends a check that batchd would let run."""
    s = spec(tmp_path, timeout=timeout, check_argv=check, check_timeout=check_timeout)
    times = [a for a in sbatch_argv([], s) if a.startswith("--time=")]
    assert times == ([time] if time else [])


def test_the_check_record_parses() -> None:
    """Running: END FROM BEGAN; ended: END FROM BEGAN ENDED CODE; anything else: None."""
    assert parse_check("31 56 1796473383.01\n") == CheckTrace(31, 56, 1796473383.01)
    ended = parse_check("31 56 100.5 103.0 3\n")
    assert ended == CheckTrace(31, 56, 100.5, 103.0, 3) and ended.duration_s == 2.5
    assert parse_check("31 56 %s.%N 103.0 0") == CheckTrace(31, 56, None, 103.0, 0)
    assert CheckTrace(31, 56, None, 103.0, 0).duration_s == 0.0
    for bad in ("", "31", "31 56", "x 56 1", "31 56 1 2", "31 56 1 2 3 4"):
        assert parse_check(bad) is None
    assert check_path(Path("/s/0.1.log"), "42") == Path("/s/0.1.log.slurm-42.check")


COMPLETED = JobInfo("COMPLETED", "batchd-r1", 0, None, 9.0)


@pytest.mark.parametrize(
    ("state", "trace", "timeout", "expected"),
    [
        ("COMPLETED", CheckTrace(5, 9, 10.0, 12.0, 0), 60, JobCheck(0, False, 2.0, 60, b"o")),
        ("FAILED", CheckTrace(5, 9, 10.0, 12.0, 3), 60, JobCheck(3, False, 2.0, 60, b"o")),
        # timeout(1)'s 124 (TERM) or 137 (KILL) at the limit: timed out.
        ("FAILED", CheckTrace(5, 9, 10.0, 70.0, 124), 60, JobCheck(124, True, 60.0, 60, b"o")),
        ("FAILED", CheckTrace(5, 9, 10.0, 71.0, 137), 60, JobCheck(137, True, 61.0, 60, b"o")),
        # The check's own 124, well before the limit (or with none): its exit status.
        ("FAILED", CheckTrace(5, 9, 10.0, 11.0, 124), 60, JobCheck(124, False, 1.0, 60, b"o")),
        ("FAILED", CheckTrace(5, 9, 10.0, 99.0, 124), 0, JobCheck(124, False, 89.0, 0, b"o")),
        # No end recorded: the job ended under the check, and Slurm's state says how.
        (
            "NODE_FAIL",
            CheckTrace(5, 9, 10.0),
            60,
            JobCheck(None, False, 0.0, 60, b"o", "the job's node failed (NODE_FAIL)"),
        ),
        (
            "COMPLETED",
            CheckTrace(5, 9, 10.0),
            60,
            JobCheck(None, False, 0.0, 60, b"o", "the job ended (COMPLETED) before the check did"),
        ),
        (None, CheckTrace(5, 9, 10.0), 60, JobCheck(None, False, 0.0, 60, b"o", cut_short(None))),
        # Cancelled (or preempted) during the check: TERM reached it too; its 143 is the
        # cancel's, not its verdict. A 0 before the cancel still passes.
        (
            "CANCELLED",
            CheckTrace(5, 9, 10.0, 12.0, 143),
            60,
            JobCheck(143, False, 2.0, 60, b"o", "the job was cancelled outside batchd (CANCELLED)"),
        ),
        ("CANCELLED", CheckTrace(5, 9, 10.0, 12.0, 0), 60, JobCheck(0, False, 2.0, 60, b"o")),
    ],
)
def test_how_the_check_inside_the_job_ended(
    state: str | None, trace: CheckTrace, timeout: float, expected: JobCheck
) -> None:
    """The check's record and the job's end state make its result."""
    assert job_check(state, trace, b"o", timeout) == expected


def test_once_the_check_started_the_end_state_is_the_checks_not_the_agents() -> None:
    """The program's 0 stands for the agent (completed, whatever state the check left the
    job in); the agent's tail is what the engine cut before the header; the check rides
    along. No check record: the end state is the agent's, as before."""
    node_fail = JobInfo("NODE_FAIL", "batchd-r1", None, 9, 9.0)
    traces = Traces(status=0, check=CheckTrace(5, 9, 10.0), tail=b"done\n", output_bytes=5)
    raw = end_result(node_fail, traces, cause=None, check_timeout=60)
    assert (raw.exit_code, raw.cluster_state, raw.stdout_tail) == (0, None, b"done\n")
    assert raw.check == JobCheck(
        None, False, 0.0, 60, b"", cut_short="the job's node failed (NODE_FAIL)"
    )
    assert Classifier.build().judge(raw, "auto").outcome == "completed"
    agent_only = end_result(node_fail, Traces(status=0), cause=None)
    assert (agent_only.cluster_state, agent_only.check) == ("NODE_FAIL", None)
    assert Classifier.build().judge(agent_only, "auto").outcome == "failed"


def test_the_check_inside_the_job_is_worded_as_one_run_here() -> None:
    """verify.from_job: the same messages as a local check (exit N with the last lines, the
    timeout naming verify.timeout), and a check cut short says why."""
    failed = verify.from_job(JobCheck(3, False, 2.0, 60, b"ok 1\nFAIL: test_login\n\n"))
    assert verify.failure_message(failed) == "verify failed (exit 3): ok 1 | FAIL: test_login"
    assert failed.verify_result().exit_code == 3 and not failed.passed
    timed = verify.from_job(JobCheck(124, True, 60.0, 60, b"slow\n"))
    assert verify.failure_message(timed) == (
        "verify failed: timed out after 60 s (verify.timeout): slow"
    )
    assert timed.exit_code is None
    cut = verify.from_job(JobCheck(None, False, 0.0, 60, b"", "the job's node failed (NODE_FAIL)"))
    assert verify.failure_message(cut) == (
        "verify did not finish: the job's node failed (NODE_FAIL): (no output)"
    )
    assert verify.from_job(JobCheck(0, False, 1.0, 60, b"all good\n")).passed


# --- the wrapper script, run by sh -------------------------------------------------------


def run_wrapper(tmp_path: Path, args: list[str], log_text: bytes = b"") -> tuple[int, Path]:
    """Run the wrapper as Slurm would (job id 7, output appended to the log); its exit
    status and the log."""
    script = tmp_path / "slurm-job.sh"
    script.write_text(WRAPPER)
    log = tmp_path / "0.1.log"
    log.write_bytes(log_text)
    env = {**os.environ, "SLURM_JOB_ID": "7"}
    with log.open("ab") as out:
        done = subprocess.run(
            ["sh", str(script), str(log), *args], stdout=out, stderr=out, env=env, cwd=tmp_path
        )
    return done.returncode, log


NASTY = ["$(touch pwned)", "`touch pwned`", "a b", "'q'", '"d"', ";", "*"]


def test_the_program_and_the_check_get_their_arguments_untouched(tmp_path: Path) -> None:
    """Both argvs arrive as they are (no shell evaluates them); the check runs after the
    program, with BATCHD_VERIFY=1, its output after the header on a line of its own; the
    records say where the agent's output ends and the check's begins."""
    show = ["sh", "-c", 'printf "%s|" "$@" "$BATCHD_VERIFY"; exit 3', "sh", *NASTY]
    program = ["printf", "%s|", *NASTY]
    code, log = run_wrapper(
        tmp_path, ["60", "1", "--- verify: x ---", str(len(show)), *show, *program], b"a"
    )
    text = log.read_bytes()
    agent = b"a" + "|".join(NASTY).encode() + b"|"
    checked = "|".join(NASTY).encode() + b"|1|"
    assert text == agent + b"\n--- verify: x ---\n" + checked
    assert code == 3 and not (tmp_path / "pwned").exists()
    assert status_path(log, "7").read_text() == "0\n"
    trace = parse_check(check_path(log, "7").read_text())
    assert trace is not None and (trace.agent_end, trace.exit_code) == (len(agent), 3)
    assert text[trace.output_from :] == checked
    assert trace.began is not None and abs(trace.began - time.time()) < 60


def test_no_check_after_a_failed_program_or_without_one(tmp_path: Path) -> None:
    """A program that exits 1: its status, no check; N = 0: no check, the program's status."""
    code, log = run_wrapper(tmp_path, ["60", "1", "H", "1", "touch", "sh", "-c", "exit 1"])
    assert (code, log.read_bytes(), status_path(log, "7").read_text()) == (1, b"", "1\n")
    assert not check_path(log, "7").exists() and not (tmp_path / "touch").exists()
    code, log = run_wrapper(tmp_path, ["0", "1", "", "0", "sh", "-c", "echo hi; exit 4"])
    assert (code, log.read_bytes(), status_path(log, "7").read_text()) == (4, b"hi\n", "4\n")
    assert not check_path(log, "7").exists()


def test_a_check_past_its_limit_is_stopped_by_timeout(tmp_path: Path) -> None:
    """verify.timeout = 0.5 s: timeout(1) ends the check (its child too) and the record
    reads as timed out."""
    check = ["sh", "-c", "sleep 30 & echo $! > child; wait"]
    code, log = run_wrapper(tmp_path, ["0.5", "0.5", "H", "3", *check, "true"])
    trace = parse_check(check_path(log, "7").read_text())
    assert trace is not None and code == 124
    assert job_check("FAILED", trace, b"", 0.5).timed_out
    assert log.read_bytes() == b"H\n"
    child = int((tmp_path / "child").read_text())
    poll(lambda: not procfs.is_alive(child, None), 10, "the check's child gone", lambda: "")
