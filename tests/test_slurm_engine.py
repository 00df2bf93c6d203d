"""The Slurm engine (SPEC section 12) against a real private cluster, driven directly.

Every test submits real jobs to the session's cluster (tests/slurm_cluster.py)
that run the fake agent; the engine's own poller watches them. Where the
cluster cannot run (not root, Slurm not installed) the tests skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from batchd.classify import Classifier
from batchd.engines import LaunchSpec, RunnerEngine, RunRef, SpawnError
from batchd.engines.slurm import SlurmEngine
from batchd.engines.slurm_protocol import WRAPPER_NAME, status_path
from tests.slurm_setup import DEADLINE, POLL, Setup, forgotten, gone, queued, until
from tests.slurm_setup import setup as setup

pytestmark = pytest.mark.anyio

CLASSIFY = Classifier.build()


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
