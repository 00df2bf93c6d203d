"""Stopping Slurm jobs (SPEC section 12) against a real private cluster: stop, batchd's
timeout, kill_grace, pending jobs cancelled before they start, and a job the cluster
preempts. Where the time matters, the engine's clock is a ManualClock moved by hand: a
300 s timeout and a 100 s kill_grace take no real minutes. Skipped where the cluster
cannot run (not root, Slurm not installed).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from batchd.classify import Classifier, RawResult
from batchd.clock import ManualClock
from batchd.engines import LaunchSpec
from batchd.engines.slurm import SlurmRun
from batchd.engines.slurm_job import Phase
from tests.slurm_setup import DEADLINE, Setup, gone, turn, turn_to, until
from tests.slurm_setup import setup as setup

pytestmark = pytest.mark.anyio

CLASSIFY = Classifier.build()


async def collect(run: SlurmRun, results: list[RawResult]) -> None:
    results.append(await run.wait())


async def start_manual(
    setup: Setup, feature: str, name: str, timeout: float = 0, kill_grace: float = 1
) -> tuple[ManualClock, LaunchSpec, SlurmRun]:
    """A job submitted by an engine whose clock moves only by hand (a poll per second)."""
    clock = ManualClock(1000.0)
    launch = setup.spec(feature, name, timeout=timeout, kill_grace=kill_grace)
    return clock, launch, await setup.engine(clock=clock, poll=1.0).start(launch)


async def test_stop_cancels_the_job_and_wait_says_interrupted(setup: Setup) -> None:
    """stop() removes a running job from the queue (TERM reaches the agent); wait is interrupted."""
    engine = setup.engine()
    spec = setup.spec("sleep=60", "stopped")
    run = await engine.start(spec)
    waiting = anyio.Event()
    result: list[Any] = []

    async def wait() -> None:
        waiting.set()
        result.append(await run.wait())

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await waiting.wait()
            await until(lambda: run.describe() == "RUNNING", "the job runs")
            await until(lambda: bool(setup.agent_events(spec.run_id)), "the agent started")
            run.stop("cancel")
    [raw] = result
    assert raw.interrupted and CLASSIFY.judge(raw, "auto").outcome == "interrupted"
    assert await gone(setup.cluster, run.job_id)
    assert [e["event"] for e in setup.agent_events(spec.run_id)] == ["start", "term"]


async def test_batchd_timeout_cancels_the_job(setup: Setup) -> None:
    """Past LaunchSpec.timeout of running time the job is cancelled and wait says timed_out."""
    engine = setup.engine()
    # 5 s: the agent (its start record, its SIGTERM handler) is up well before the timeout,
    # even on a busy machine; nothing but the timeout ends it within DEADLINE.
    spec = setup.spec("sleep=600", "slow", timeout=5)
    submitted = time.time()
    run = await engine.start(spec)
    shown = await anyio.run_process(["scontrol", "show", "job", run.job_id], env=setup.cluster.env)
    assert b"TimeLimit=00:01:00" in shown.stdout  # Slurm's own limit: the timeout in minutes, up
    with anyio.fail_after(DEADLINE):
        raw = await run.wait()
    assert raw.timed_out and not raw.interrupted
    v = CLASSIFY.judge(raw, "auto")
    assert (v.outcome, v.failure_type) == ("timed_out", "transient")
    assert await gone(setup.cluster, run.job_id)
    [_start, term] = setup.agent_events(spec.run_id)
    # Not early: the clock starts when Slurm starts the job (the agent itself may start later).
    assert term["event"] == "term" and term["t"] - submitted >= spec.timeout - 0.1


async def test_the_timeout_is_counted_on_the_engines_clock(setup: Setup) -> None:
    """A 300 s timeout on a manual clock: the deadline is set when the job is first seen
    running, nothing is sent a moment before it, and at it TERM ends the job: timed_out."""
    clock, spec, run = await start_manual(setup, "sleep=600", "manual", timeout=300)
    results: list[RawResult] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, run, results)
        await turn(clock, 1.0, lambda: run.job.state.deadline is not None, "seen running")
        seen_at, deadline = clock.t, run.job.state.deadline
        assert deadline is not None and seen_at + 300 - 30 <= deadline <= seen_at + 300
        await turn(clock, 1.0, lambda: bool(setup.agent_events(spec.run_id)), "agent started")
        await turn_to(clock, deadline - 0.5)
        assert (run.job.state.phase, run.describe()) == (Phase.WAITING, "RUNNING")
        await turn_to(clock, deadline)
        assert run.job.state.term_at == deadline and run.job.timed_out
        await turn(clock, 1.0, lambda: bool(results), "the job ended")
    [raw] = results
    assert (raw.timed_out, raw.interrupted, raw.exit_code) == (True, False, 143)
    assert [e["event"] for e in setup.agent_events(spec.run_id)] == ["start", "term"]


async def test_kill_follows_term_after_kill_grace_on_the_engines_clock(setup: Setup) -> None:
    """A program that ignores TERM: KILL goes out kill_grace (100 s, manual clock) after TERM,
    not a moment before, and ends the job; the attempt is interrupted."""
    clock, spec, run = await start_manual(
        setup, "ignore_term sleep=600", "stubborn", kill_grace=100
    )
    results: list[RawResult] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(collect, run, results)
        await turn(clock, 1.0, lambda: bool(setup.agent_events(spec.run_id)), "agent started")
        await turn(clock, 1.0, lambda: run.describe() == "RUNNING", "seen running")
        run.stop("test")
        await turn(clock, 1.0, lambda: run.job.state.phase is Phase.TERM_SENT, "TERM sent")
        term_at = run.job.state.term_at
        assert term_at is not None
        await turn_to(clock, term_at + 99.5)
        assert (run.job.state.phase, run.describe()) == (Phase.TERM_SENT, "RUNNING")
        assert not await gone(setup.cluster, run.job_id)
        await turn_to(clock, term_at + 100)
        assert run.job.state.phase in (Phase.KILL_SENT, Phase.ENDED)
        await turn(clock, 1.0, lambda: bool(results), "the job ended")
    [raw] = results
    assert raw.interrupted and CLASSIFY.judge(raw, "auto").outcome == "interrupted"
    assert [e["event"] for e in setup.agent_events(spec.run_id)] == ["start"]


async def test_a_pending_job_stopped_with_a_running_one_never_starts(setup: Setup) -> None:
    """A held (pending) job and a running one stopped together: the pending one is cancelled
    outright and its program never runs; the running one gets TERM; both are interrupted."""
    engine = setup.engine()
    running_spec = setup.spec("sleep=600", "running")
    held_spec = setup.spec("stdout=never", "held")
    running = await engine.start(running_spec)
    submitted = await setup.engine(["--hold"]).start(held_spec)
    held = await engine.reattach(submitted.ref, held_spec)  # followed by the same poller
    assert held is not None and held.describe() == "PENDING"
    results: list[RawResult] = []
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, held, results)
            tg.start_soon(collect, running, results)
            await until(lambda: bool(setup.agent_events(running_spec.run_id)), "agent started")
            held.stop("pause --now")
            running.stop("pause --now")
    assert [r.interrupted for r in results] == [True, True]
    assert setup.agent_events(held_spec.run_id) == []
    assert [e["event"] for e in setup.agent_events(running_spec.run_id)] == ["start", "term"]
    assert held.describe() == "CANCELLED"
    assert await gone(setup.cluster, held.job_id) and await gone(setup.cluster, running.job_id)


async def test_a_preempted_job_ends_preempted_and_is_transient(setup: Setup) -> None:
    """A job the cluster preempts (a job of a higher partition takes the node) ends with
    Slurm's PREEMPTED: a transient failure that names it, not an interruption."""
    engine = setup.engine()
    spec = setup.spec("sleep=600", "victim")
    run = await engine.start(spec)
    results: list[RawResult] = []
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(collect, run, results)
            await until(lambda: run.describe() == "RUNNING", "the job runs")
            await until(lambda: bool(setup.agent_events(spec.run_id)), "the agent started")
            urgent = ["--partition=urgent", "--exclusive", "--output=/dev/null", "--wrap=true"]
            await anyio.run_process(["sbatch", "--chdir=/", *urgent], env=setup.cluster.env)
    [raw] = results
    assert (raw.cluster_state, raw.interrupted, raw.timed_out) == ("PREEMPTED", False, False)
    verdict = CLASSIFY.judge(raw, "auto")
    assert (verdict.outcome, verdict.failure_type) == ("failed", "transient")
    assert verdict.message is not None and "PREEMPTED" in verdict.message
