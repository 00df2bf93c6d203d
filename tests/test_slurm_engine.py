"""The Slurm engine (SPEC section 12) against a real private cluster, driven directly.

Every test submits real jobs to the session's cluster (tests/slurm_cluster.py)
that run the fake agent; the engine's own poller watches them. Where the
cluster cannot run (not root, Slurm not installed) the tests skip.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchd.classify import Classifier
from batchd.engines import LaunchSpec, RunnerEngine, RunRef, SpawnError
from batchd.engines.slurm import (
    WRAPPER_NAME,
    JobInfo,
    SlurmEngine,
    parse_duration,
    parse_show_job,
    status_path,
    time_limit_minutes,
)
from tests.slurm_cluster import Cluster

pytestmark = pytest.mark.anyio

FAKE_AGENT = str(Path(__file__).parent / "bin" / "fake-agent")
POLL = 0.2
DEADLINE = 30.0
CLASSIFY = Classifier.build()


class Setup:
    """A state dir, a repository and an engine for one test; jobs named ``<prefix>-...``."""

    def __init__(self, cluster: Cluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.state_dir = tmp_path / "state"
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        self.agent_log = tmp_path / "agent.jsonl"
        self.prefix = f"t{secrets.token_hex(4)}"

    def engine(self, sbatch_args: list[str] | None = None) -> SlurmEngine:
        return SlurmEngine(self.state_dir, sbatch_args or [], POLL, self.cluster.env)

    def spec(
        self, feature: str, name: str, timeout: float = 0, kill_grace: float = 1
    ) -> LaunchSpec:
        run_id = f"{self.prefix}-{name}-{secrets.token_hex(3)}"
        env = {**os.environ, "FAKE_AGENT_LOG": str(self.agent_log), "BATCHD_RUN_ID": run_id}
        return LaunchSpec(
            run_id=run_id,
            argv=[FAKE_AGENT, feature],
            env=env,
            cwd=str(self.repo),
            log_path=self.state_dir / "batches" / "b1" / "logs" / f"{name}.1.log",
            timeout=timeout,
            kill_grace=kill_grace,
        )

    def agent_events(self, run_id: str) -> list[dict[str, Any]]:
        if not self.agent_log.exists():
            return []
        lines = self.agent_log.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["run_id"] == run_id]


@pytest.fixture
def setup(slurm_cluster: Cluster, tmp_path: Path) -> Setup:
    return Setup(slurm_cluster, tmp_path)


async def queued(cluster: Cluster) -> set[str]:
    """The ids of every job Slurm still lists as pending, running or completing."""
    res = await anyio.run_process(["squeue", "-h", "-o", "%i"], env=cluster.env)
    return set(res.stdout.decode().split())


async def gone(cluster: Cluster, job_id: str) -> bool:
    """Slurm no longer lists the job as pending, running or completing."""
    return job_id not in await queued(cluster)


async def forgotten(cluster: Cluster, job_id: str) -> bool:
    """Slurm does not know the job at all any more (past MinJobAge)."""
    res = await anyio.run_process(["scontrol", "show", "job", job_id], env=cluster.env, check=False)
    return res.returncode != 0 and b"Invalid job id" in res.stderr


async def until(
    cond: Callable[[], Awaitable[bool] | bool], what: str, deadline: float = DEADLINE
) -> None:
    """Poll a condition (plain or async) until it holds; fail naming ``what`` after ``deadline``."""
    try:
        with anyio.fail_after(deadline):
            while True:
                value = cond()
                if value if isinstance(value, bool) else await value:
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not after {deadline} s: {what}") from None


async def test_several_jobs_run_at_once(setup: Setup, tmp_path: Path) -> None:
    """Three attempts submitted together run as concurrent jobs (they meet at a barrier) and
    all complete."""
    engine = setup.engine()
    gate = tmp_path / "gate"
    gate.mkdir()
    specs = [setup.spec(f"barrier={gate}:3 stdout=done", f"c{i}") for i in range(3)]
    runs = [await engine.start(s) for s in specs]
    assert all(r.ref.job_id and r.ref.job_id.isdigit() for r in runs)
    results: list[Any] = [None] * 3

    async def wait(i: int) -> None:
        results[i] = await runs[i].wait()

    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(wait, i)
    assert all(CLASSIFY.judge(r, "auto").outcome == "completed" for r in results)
    events = [setup.agent_events(s.run_id) for s in specs]
    starts = [e["t"] for ev in events for e in ev if e["event"] == "start"]
    ends = [e["t"] for ev in events for e in ev if e["event"] == "end"]
    assert len(starts) == len(ends) == 3
    assert max(starts) < min(ends), "the three jobs did not overlap"


async def test_cancelling_wait_leaves_the_job_running(setup: Setup) -> None:
    """A cancelled wait only stops waiting (jobs outlive the daemon); a later wait gets the end."""
    engine = setup.engine()
    go = setup.repo / "go"  # the job runs until the test has looked
    run = await engine.start(setup.spec(f"stdout=still_here wait={go}", "outlives"))
    with anyio.move_on_after(0.3):
        await run.wait()
    assert not await gone(setup.cluster, run.job_id)
    go.touch()
    with anyio.fail_after(DEADLINE):
        raw = await run.wait()
    assert CLASSIFY.judge(raw, "auto").outcome == "completed" and b"still here" in raw.stdout_tail


async def test_feature_text_reaches_the_agent_as_one_untouched_argument(
    setup: Setup, tmp_path: Path
) -> None:
    """Text with $(...), backquotes and quotes is one argv element, and no shell runs it."""
    marker = tmp_path / "pwned"
    feature = f"stdout=hi $(mkdir {marker}) `mkdir {marker}` \"dq\" 'sq' ; mkdir {marker}"
    spec = setup.spec(feature, "text")
    engine = setup.engine()
    run = await engine.start(spec)
    with anyio.fail_after(DEADLINE):
        raw = await run.wait()
    assert CLASSIFY.judge(raw, "auto").outcome == "completed"
    [start, _end] = setup.agent_events(spec.run_id)
    assert start["argv"] == [feature]
    assert not marker.exists()
    wrapper = setup.state_dir / WRAPPER_NAME
    assert wrapper.stat().st_mode & 0o777 == 0o700
    assert spec.log_path.stat().st_mode & 0o777 == 0o600


async def test_exit_status_and_log_tail_come_back(setup: Setup) -> None:
    """A completed job and a failing one: exit codes, end states and the log tail are right."""
    engine = setup.engine()
    ok = await engine.start(setup.spec("stdout=all_good", "ok"))
    bad = await engine.start(setup.spec("fail_until=2 stdout=trying", "bad"))
    with anyio.fail_after(DEADLINE):
        raw_ok, raw_bad = await ok.wait(), await bad.wait()
    assert (raw_ok.exit_code, raw_ok.cluster_state) == (0, "COMPLETED")
    assert b"all good" in raw_ok.stdout_tail
    assert (raw_bad.exit_code, raw_bad.cluster_state) == (1, "FAILED")
    assert raw_bad.stdout_tail == raw_bad.stderr_tail
    assert raw_bad.stdout_tail.endswith(b"trying\nConnectionError: connection reset by peer\n")
    verdict = CLASSIFY.judge(raw_bad, "auto")
    assert (verdict.outcome, verdict.failure_type) == ("failed", "transient")
    assert verdict.message is not None and "ConnectionError" in verdict.message
    assert ok.describe() == "COMPLETED" and bad.describe() == "FAILED"


async def test_a_rerun_appends_to_the_attempt_log(setup: Setup) -> None:
    """A second job for the same attempt log appends, and its tail is its own output."""
    engine = setup.engine()
    first = setup.spec("stdout=first_run", "again")
    second = setup.spec("stdout=second_run exit=2", "again")
    with anyio.fail_after(DEADLINE):
        await (await engine.start(first)).wait()
        raw = await (await engine.start(second)).wait()
    text = first.log_path.read_bytes()
    assert text.index(b"first run") < text.index(b"second run")
    assert raw.exit_code == 2 and b"first run" not in raw.stdout_tail


async def test_reattach_after_the_daemon_is_gone(setup: Setup) -> None:
    """A new engine finds a job that ended meanwhile (judged at once) and one still running."""
    dropped = setup.engine()  # never closed nor waited on, as after kill -9 of the daemon
    short_spec = setup.spec("stderr=RateLimitError:_slow_down exit=3", "short")
    go = setup.repo / "go"  # the long job runs until the test has looked
    long_spec = setup.spec(f"stdout=long_done wait={go}", "long")
    short, long = await dropped.start(short_spec), await dropped.start(long_spec)
    del dropped
    await until(lambda: gone(setup.cluster, short.job_id), "the short job ended")
    engine = setup.engine()
    again = await engine.reattach(short.ref, short_spec)
    assert again is not None and again.done  # ended already: judged at once, no waiting
    raw = await again.wait()
    assert (raw.exit_code, raw.cluster_state) == (3, "FAILED")
    verdict = CLASSIFY.judge(raw, "auto")
    assert (verdict.outcome, verdict.failure_type) == ("failed", "transient")
    assert verdict.message is not None and "RateLimitError" in verdict.message
    live = await engine.reattach(long.ref, long_spec)
    assert live is not None and live.describe() in ("PENDING", "CONFIGURING", "RUNNING")
    assert not live.done
    go.touch()
    with anyio.fail_after(DEADLINE):
        raw = await live.wait()
    assert CLASSIFY.judge(raw, "auto").outcome == "completed"
    assert b"long done" in raw.stdout_tail
    assert [e["event"] for e in setup.agent_events(long_spec.run_id)] == ["start", "end"]


async def test_a_forgotten_job_is_judged_from_the_recorded_exit_status(setup: Setup) -> None:
    """Past MinJobAge Slurm no longer knows the job; the wrapper's status file still decides."""
    spec = setup.spec("stdout=finished exit=4", "forgotten")
    run = await setup.engine().start(spec)
    await until(lambda: status_path(spec.log_path, run.job_id).exists(), "the job ran")
    await until(lambda: forgotten(setup.cluster, run.job_id), "Slurm forgot the job")
    again = await setup.engine().reattach(run.ref, spec)
    assert again is not None and again.done  # judged at once from the status file
    raw = await again.wait()
    assert (raw.exit_code, raw.cluster_state, raw.interrupted) == (4, None, False)
    assert b"finished" in raw.stdout_tail
    v = CLASSIFY.judge(raw, "auto")
    assert (v.outcome, v.message) == ("failed", "exit code 4: finished")


async def test_a_job_without_a_trace_is_not_reattached(setup: Setup) -> None:
    """An id Slurm never had (and no status file), or one now another job's: reattach gives None."""
    engine = setup.engine()
    spec = setup.spec("stdout=x", "ghost")
    assert await engine.reattach(RunRef(job_id="987654"), spec) is None
    other = await engine.start(setup.spec("sleep=60", "other"))
    assert await engine.reattach(other.ref, spec) is None  # the id is not this attempt's job
    assert await engine.reattach(RunRef(pid=1), spec) is None
    other.stop("test over")
    with anyio.fail_after(DEADLINE):
        assert (await other.wait()).interrupted


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


async def test_sbatch_refusing_the_job_is_a_submit_error(setup: Setup) -> None:
    """A bad partition in sbatch_args: SpawnError('submit') naming sbatch and its complaint."""
    engine = setup.engine(["--partition=no-such-partition"])
    with pytest.raises(SpawnError) as e:
        await engine.start(setup.spec("stdout=x", "refused"))
    assert e.value.kind == "submit"
    assert "sbatch" in e.value.message and "partition" in e.value.message.lower()


async def test_no_sbatch_is_a_submit_error(tmp_path: Path) -> None:
    """Slurm's commands not installed: SpawnError('submit') naming sbatch (no cluster needed)."""
    engine: RunnerEngine = SlurmEngine(tmp_path / "state", [], POLL, {"PATH": str(tmp_path)})
    spec = LaunchSpec(
        run_id="r1", argv=["true"], env={}, cwd=str(tmp_path), log_path=tmp_path / "a.log"
    )
    with pytest.raises(SpawnError) as e:
        await engine.start(spec)
    assert e.value.kind == "submit" and "sbatch not found in PATH" in e.value.message


async def test_a_missing_cwd_is_a_cwd_error(setup: Setup, tmp_path: Path) -> None:
    """A working directory that does not exist: SpawnError('cwd') before anything is submitted."""
    engine = setup.engine()
    spec = setup.spec("stdout=x", "nocwd")
    missing = LaunchSpec(**{**spec.__dict__, "cwd": str(tmp_path / "nope")})
    with pytest.raises(SpawnError) as e:
        await engine.start(missing)
    assert e.value.kind == "cwd" and "nope" in e.value.message


async def test_stop_orphans_cancels_only_unrecorded_jobs_of_this_state_dir(setup: Setup) -> None:
    """An unrecorded job of the prefix is cancelled; a known one, another prefix's and another
    user's job with the same prefix stay."""
    engine = setup.engine()
    known = await engine.start(setup.spec("sleep=60", "known"))
    orphan = await engine.start(setup.spec("sleep=60", "orphan"))
    elsewhere = setup.spec("sleep=60", "elsewhere")
    elsewhere = LaunchSpec(**{**elsewhere.__dict__, "run_id": "other-" + elsewhere.run_id})
    foreign = await engine.start(elsewhere)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    name = f"--job-name=batchd-{setup.prefix}-nobody"
    options = [name, "--chdir=/", "--output=/dev/null", "--wrap=sleep 60"]
    res = await anyio.run_process(
        [*as_nobody, "sbatch", "--parsable", *options], env=setup.cluster.env
    )
    other_user = res.stdout.decode().strip()
    known_ids = {known.spec.run_id, "some-other-run"}
    lines = await engine.stop_orphans(setup.prefix, known_ids)
    assert len(lines) == 1 and orphan.job_id in lines[0] and orphan.spec.run_id in lines[0]
    await until(lambda: gone(setup.cluster, orphan.job_id), "the orphan is gone")
    left = await queued(setup.cluster)
    assert {known.job_id, foreign.job_id, other_user} <= left
    ids = [known.job_id, foreign.job_id, other_user]
    await anyio.run_process(["scancel", *ids], env=setup.cluster.env)


# --- the pure helpers (no cluster needed) ----------------------------------------------


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
    assert parse_show_job("slurm_load_jobs error: Invalid job id specified") is None


def test_our_sbatch_options_come_after_the_users(tmp_path: Path) -> None:
    """slurm.sbatch_args cannot rename the job or move its log: sbatch keeps the last value."""
    engine = SlurmEngine(tmp_path, ["--partition=gpu", "--job-name=mine"], 5, {})
    spec = LaunchSpec(
        run_id="r1", argv=["a"], env={}, cwd="/w", log_path=tmp_path / "l", timeout=90
    )
    argv = engine.sbatch_argv(spec)
    assert argv.index("--partition=gpu") < argv.index("--job-name=batchd-r1")
    assert argv.index("--job-name=mine") < argv.index("--job-name=batchd-r1")
    assert "--time=2" in argv and f"--output={tmp_path / 'l'}" in argv
    assert status_path(tmp_path / "l", "42") == tmp_path / "l.slurm-42.exit"
