"""The Slurm engine's tests' common ground: a state dir, a repository and an engine per
test on the session's private cluster (tests/slurm_cluster.py), and what they ask Slurm.

The engine's poller is driven by real time (``MonotonicClock``) or, where a test
moves the time by hand, by a ``ManualClock``: ``turn`` moves it one poll at a
time, each time once the poller sleeps again (the positive sign that its round
is over).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchd.clock import Clock, ManualClock
from batchd.engines import LaunchSpec
from batchd.engines.slurm import SlurmEngine
from tests.slurm_cluster import Cluster

FAKE_AGENT = str(Path(__file__).parent / "bin" / "fake-agent")
POLL = 0.2
DEADLINE = 30.0


class Setup:
    """A state dir, a repository and an engine for one test; jobs named ``<prefix>-...``."""

    def __init__(self, cluster: Cluster, tmp_path: Path) -> None:
        self.cluster = cluster
        self.state_dir = tmp_path / "state"
        self.repo = tmp_path / "repo"
        self.repo.mkdir()
        self.agent_log = tmp_path / "agent.jsonl"
        self.prefix = f"t{secrets.token_hex(4)}"

    def engine(
        self, sbatch_args: list[str] | None = None, clock: Clock | None = None, poll: float = POLL
    ) -> SlurmEngine:
        return SlurmEngine(self.state_dir, sbatch_args or [], poll, self.cluster.env, clock)

    def spec(
        self,
        feature: str,
        name: str,
        timeout: float = 0,
        kill_grace: float = 1,
        stall_timeout: float = 0,
        check: tuple[str, ...] = (),
        check_timeout: float = 0,
    ) -> LaunchSpec:
        """The fake agent acting on ``feature`` as one job; ``check``: the check after it."""
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
            stall_timeout=stall_timeout,
            check_argv=check,
            check_timeout=check_timeout,
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


def asleep(clock: ManualClock) -> bool:
    """The poller sleeps until a moment still to come: its round is over."""
    return bool(clock.sleepers) and clock.sleepers[0] > clock.t


async def turn(clock: ManualClock, step: float, done: Callable[[], bool], what: str) -> None:
    """Move ``clock`` by ``step`` after each round of the poller until ``done()`` holds."""
    try:
        with anyio.fail_after(DEADLINE):
            while not done():
                if asleep(clock):
                    clock.advance(step)
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not after {DEADLINE} s of turning the clock: {what}") from None


async def turn_to(clock: ManualClock, when: float) -> None:
    """Move ``clock`` to ``when`` (at or past the next round) once the poller sleeps, then
    wait until the round that starts is over."""
    await until(lambda: asleep(clock), "the poller asleep")
    clock.advance(when - clock.t)
    await until(lambda: asleep(clock), f"the poller's round at {when}")
