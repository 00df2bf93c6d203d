"""What runs inside a Slurm job besides the agent, and how batchd watches it, on a real
private cluster (SPEC 13, 14): the check after the agent, in the same job, where the
work is; and a job whose log stops growing, stopped as a stall. The engine is driven
directly; its poller runs on real time. Skipped where the cluster cannot run.
"""

from __future__ import annotations

import dataclasses
import time

import anyio
import pytest

from batchd import verify
from batchd.classify import Classifier, RawResult, RunnerTraits
from batchd.engines import LaunchSpec
from batchd.engines.slurm_protocol import check_path, status_path
from tests.slurm_setup import DEADLINE, POLL, Setup, gone
from tests.slurm_setup import setup as setup

pytestmark = pytest.mark.anyio

CLASSIFY = Classifier.build()
# The check: says where it runs and that it is the check, then fails as a test run would.
SAYS_WHERE = (
    "sh",
    "-c",
    'echo "job=$SLURM_JOB_ID verify=$BATCHD_VERIFY cwd=$PWD"; echo "FAIL: test_login"; exit 3',
)


async def run_job(setup: Setup, spec: LaunchSpec) -> tuple[RawResult, str]:
    """Submit ``spec``, wait for its end; the result and the job id."""
    run = await setup.engine().start(spec)
    with anyio.fail_after(DEADLINE):
        return await run.wait(), run.job_id


async def test_the_check_runs_in_the_job_after_the_agent(setup: Setup) -> None:
    """The agent completes, then the check runs in the same job (its id), in the cwd, with
    BATCHD_VERIFY=1, after its header in the log; the agent's verdict is judged on the
    agent's output alone, and the check's output and exit status come back beside it."""
    spec = setup.spec("stdout=agent_done", "checked", check=SAYS_WHERE, check_timeout=60)
    raw, job_id = await run_job(setup, spec)
    assert (raw.exit_code, raw.cluster_state, raw.stdout_tail) == (0, None, b"agent done\n")
    assert CLASSIFY.judge(raw, "auto").outcome == "completed"
    assert raw.check is not None and (raw.check.exit_code, raw.check.timed_out) == (3, False)
    said = f"job={job_id} verify=1 cwd={setup.repo}"
    assert raw.check.output_tail == f"{said}\nFAIL: test_login\n".encode()
    message = verify.failure_message(verify.from_job(raw.check))
    assert message == f"verify failed (exit 3): {said} | FAIL: test_login"
    header = verify.header_line(list(SAYS_WHERE))
    assert spec.log_path.read_text() == f"agent done\n{header}\n{said}\nFAIL: test_login\n"
    assert status_path(spec.log_path, job_id).read_text() == "0\n"


async def test_no_check_after_an_agent_that_failed(setup: Setup) -> None:
    """The agent exits 2: its failure is the verdict, and the check never runs."""
    marker = setup.repo / "check-ran"
    spec = setup.spec("exit=2", "nocheck", check=("touch", str(marker)), check_timeout=60)
    raw, job_id = await run_job(setup, spec)
    assert (raw.exit_code, raw.check) == (2, None)
    assert not marker.exists() and not check_path(spec.log_path, job_id).exists()


async def test_a_check_past_verify_timeout_is_stopped_in_the_job(setup: Setup) -> None:
    """verify.timeout = 1 s: the check is stopped inside the job and reads as timed out;
    the job's own time limit holds runner.timeout and verify.timeout (2 minutes)."""
    check = ("sh", "-c", "echo checking; exec sleep 600")
    spec = setup.spec("stdout=ok", "slowcheck", timeout=60, check=check, check_timeout=1)
    run = await setup.engine().start(spec)
    shown = await anyio.run_process(["scontrol", "show", "job", run.job_id], env=setup.cluster.env)
    assert b"TimeLimit=00:02:00" in shown.stdout
    with anyio.fail_after(DEADLINE):
        raw = await run.wait()
    assert raw.check is not None and raw.check.timed_out and not raw.timed_out
    message = verify.failure_message(verify.from_job(raw.check))
    assert message == "verify failed: timed out after 1 s (verify.timeout): checking"


async def test_the_agents_limits_do_not_stop_the_check(setup: Setup) -> None:
    """runner.timeout 4 s and stall_timeout 2 s are the agent's: a check that is silent
    for 6 s, past both, runs to its end and passes."""
    check = ("sh", "-c", "sleep 6; echo passed")
    spec = setup.spec(
        "stdout=quick", "longcheck", timeout=4, stall_timeout=2, check=check, check_timeout=60
    )
    raw, _ = await run_job(setup, spec)
    assert (raw.timed_out, raw.stalled, raw.interrupted) == (False, False, False)
    assert raw.check is not None and raw.check.exit_code == 0 and raw.check.duration_s >= 6
    assert verify.from_job(raw.check).summary == "passed"


async def test_a_silent_job_is_stopped_within_the_stall_timeout(setup: Setup) -> None:
    """The agent prints once, then nothing: its job is cancelled within stall_timeout +
    poll_interval + 1 s of that output (never before stall_timeout), and the result says
    it stalled: timed_out, transient, naming runner.stall_timeout."""
    spec = setup.spec("stdout=working sleep=600", "silent", stall_timeout=2, kill_grace=5)
    raw, job_id = await run_job(setup, spec)
    [start, term] = setup.agent_events(spec.run_id)
    assert term["event"] == "term"
    assert 2 <= term["t"] - start["t"] <= 2 + POLL + 1
    assert raw.stalled and not raw.timed_out and not raw.interrupted
    assert raw.stdout_tail.startswith(b"working\n")  # then slurmstepd's word of the cancel
    v = CLASSIFY.judge(raw, RunnerTraits(stall_timeout_s=2))
    assert (v.outcome, v.failure_type) == ("timed_out", "transient")
    # Then, as for every Slurm attempt, the log's tail (the job's one stream for both).
    assert v.message is not None
    assert v.message.startswith("stalled: no output for 2 s (runner.stall_timeout): working")
    assert await gone(setup.cluster, job_id)


async def test_a_job_that_keeps_printing_is_not_stalled(setup: Setup) -> None:
    """A line every 0.2 s for 4 s under a 1.5 s stall timeout: it runs to its end."""
    spec = setup.spec("", "chatty", stall_timeout=1.5)
    loop = "i=0; while [ $i -lt 20 ]; do echo tick $i; sleep 0.2; i=$((i + 1)); done"
    spec = dataclasses.replace(spec, argv=["sh", "-c", loop])
    started = time.monotonic()
    raw, _ = await run_job(setup, spec)
    assert (raw.exit_code, raw.stalled, raw.timed_out) == (0, False, False), raw
    assert raw.stdout_tail.endswith(b"tick 19\n") and time.monotonic() - started >= 4


async def test_a_job_cancelled_during_its_check_says_the_check_was_cut_short(
    setup: Setup,
) -> None:
    """Someone else's scancel while the check runs: the agent's 0 still stands (completed),
    and the check says it did not finish because the job was cancelled (not a verdict)."""
    started = setup.repo / "check-started"
    check = ("sh", "-c", f"touch {started}; exec sleep 600")
    spec = setup.spec("stdout=done", "cut", check=check, check_timeout=600)
    run = await setup.engine().start(spec)
    result: list[RawResult] = []

    async def wait() -> None:
        result.append(await run.wait())

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            while not started.exists():
                await anyio.sleep(0.05)
            await anyio.run_process(["scancel", run.job_id], env=setup.cluster.env)
    [raw] = result
    assert (raw.exit_code, raw.cluster_state, raw.interrupted) == (0, None, False)
    assert CLASSIFY.judge(raw, "auto").outcome == "completed"
    assert raw.check is not None
    assert raw.check.cut_short == "the job was cancelled outside batchd (CANCELLED)"
    assert verify.failure_message(verify.from_job(raw.check)).startswith(
        "verify did not finish: the job was cancelled outside batchd (CANCELLED)"
    )
