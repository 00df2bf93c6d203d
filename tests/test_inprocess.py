"""The engine, the local runner and the spool in this process, on both backends.

Real processes (the fake agent), real files, real state writes; no daemon
subprocess and no socket. Time is a ``ManualClock`` where the engine waits
(retry backoff, breaker cooldown), so hour-long waits take no time at all.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from batchd import commands, intake, recovery
from batchd.clock import ManualClock
from batchd.config import load_config
from batchd.daemon import limits_from
from batchd.engine import Engine
from batchd.engines.local import LocalEngine
from batchd.engines.process import Launch, spawn
from batchd.spool import Spool
from batchd.store import Store
from tests.harness import FAKE_AGENT, toml_list

pytestmark = pytest.mark.anyio
T0 = 1_900_000_000.0


async def until(pred: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll ``pred`` (real time) until it is truthy."""
    with anyio.fail_after(timeout):
        while not (value := pred()):
            await anyio.sleep(0.01)
    return value


class World:
    """An engine and its spool in a temp dir, with the fake agent as the runner."""

    def __init__(self, root: Path, engine: Engine, spool: Spool) -> None:
        self.root = root
        self.engine = engine
        self.spool = spool

    def submit(self, name: str, features: list[str]) -> None:
        """Drop a batch request (read at once, no settle time) and scan."""
        (self.spool.dir / name).write_text(json.dumps({"features": features}))
        self.spool.scan()

    def runs(self) -> list[dict[str, Any]]:
        log = self.root / "agent.jsonl"
        if not log.exists():
            return []
        return [json.loads(x) for x in log.read_text().splitlines() if x]

    def starts(self) -> list[dict[str, Any]]:
        return [r for r in self.runs() if r["event"] == "start"]


@asynccontextmanager
async def world(
    tmp_path: Path, config: str = "", env: dict[str, str] | None = None, clock: Any = None
) -> AsyncIterator[World]:
    work = tmp_path / "work"
    work.mkdir()
    agent = [sys.executable, str(FAKE_AGENT), "{feature}"]
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(
        f'spool_dir = "{tmp_path / "spool"}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'socket = "{tmp_path / "run" / "s.sock"}"\n'
        f'[runner]\ncommand = {toml_list(agent)}\ncwd = "{work}"\nkill_grace = 1\n' + config
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "BATCH_RETRY"))}
    base.update(FAKE_AGENT_LOG=str(tmp_path / "agent.jsonl"), **(env or {}))
    cfg = load_config(base, config=str(cfg_path))
    store = Store(cfg.paths.state_dir)
    store.open()
    engine = Engine(cfg, store, LocalEngine(), backend="test", env=base, clock=clock)
    spool = Spool(cfg.paths.spool_dir, limits_from(cfg), 0, lambda acc: intake.ingest(engine, acc))
    cfg.paths.spool_dir.mkdir(mode=0o700, exist_ok=True)
    recovery.load(engine)
    adopted = await recovery.recover(engine)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.run, adopted)
            yield World(tmp_path, engine, spool)
            engine.stop()
        await engine.runner.aclose()  # as the daemon does: the keeper of local runs exits
    finally:
        store.close()


async def test_an_hour_of_backoff_takes_no_time_with_a_manual_clock(tmp_path: Path) -> None:
    """A transient failure waits its backoff on the engine's clock: the engine sleeps until
    exactly then, nothing runs meanwhile, and the retry runs once the clock gets there."""
    clock = ManualClock(T0)
    config = '[retry]\nbackoff_initial = 3600\nbackoff_max = 3600\njitter = "none"\n'
    async with world(tmp_path, config, {"BATCH_RETRY_ENABLED": "1"}, clock) as w:
        w.submit("r.json", ["flaky fail_until=2"])
        await until(lambda: T0 + 3600 in clock.sleepers, "the engine asleep until the retry")
        assert len(w.starts()) == 1
        [batch] = w.engine.live.batches.values()
        assert batch.retry.next_attempt_at == "2030-03-17T18:46:40.000000Z"  # T0 + 3600
        clock.advance(3600)
        await until(lambda: batch.finished, "the retry to run")
        assert [r["attempt"] for r in w.starts()] == [1, 2]
        assert batch.state.status == "completed"


async def test_a_breaker_cooldown_half_opens_on_the_clock(tmp_path: Path) -> None:
    """A breaker that pauses the batch half-opens after its cooldown on the engine's clock:
    one probe runs, and its success closes the breaker and finishes the batch."""
    clock = ManualClock(T0)
    config = '[breaker]\nthreshold = 1\non_open = "pause"\ncooldown = 600\n'
    async with world(tmp_path, config, clock=clock) as w:
        w.submit("b.json", ["bad exit=1 stderr=TypeError", "good"])
        [batch] = w.engine.live.batches.values()
        await until(lambda: batch.state.pause_reason == "breaker", "the breaker pause")
        await until(lambda: T0 + 600 in clock.sleepers, "the engine asleep until the cooldown")
        assert len(w.starts()) == 1
        clock.advance(600)
        await until(lambda: batch.finished, "the probe to run")
        assert not batch.retry.circuit_breaker_open
        assert [r["feature"] for r in w.starts()] == ["bad exit=1 stderr=TypeError", "good"]


async def test_commands_work_on_the_engine_directly(tmp_path: Path) -> None:
    """Command functions run against the live engine: pause --now stops the runner and
    records the attempt interrupted; resume by seq runs it again; status says so."""
    async with world(tmp_path) as w:
        w.submit("c.json", ["long sleep=30", "short"])
        await until(lambda: w.starts() and w.engine.live.running, "the first feature running")
        reply = await commands.pause(w.engine, {"now": True})
        assert reply["stopped"] == 1
        [batch] = w.engine.live.batches.values()
        assert batch.state.processing_history[-1].outcome == "interrupted"
        await commands.skip(w.engine, {"batch_id": 1, "index": 0})
        resumed = await commands.resume(w.engine, {"all": True})
        assert resumed["queue_resumed"] is True
        await until(lambda: batch.finished, "the batch to finish")
        status = await commands.status(w.engine, {})
        assert status["finished_total"] == 1 and status["running"] == []
        assert [r["feature"] for r in w.starts()] == ["long sleep=30", "short"]


async def test_the_spool_settles_plain_files_on_the_time_it_is_given(tmp_path: Path) -> None:
    """A plain file is read only once unchanged for settle_ms (scan takes ``now``); a file
    that is not regular is rejected without being opened."""
    accepted: list[str] = []
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o700)
    from batchd.parse import Limits

    spool = Spool(spool_dir, Limits(), 500, lambda acc: accepted.append(acc.name))
    (spool_dir / "todo.txt").write_text("one\ntwo\n")
    os.mkfifo(spool_dir / "pipe")
    changed = (spool_dir / "todo.txt").stat().st_mtime
    due = spool.scan(now=changed + 0.1)
    assert accepted == [] and due == pytest.approx(changed + 0.5)
    assert (spool_dir / "rejected" / "pipe.error").exists()
    assert spool.scan(now=changed + 0.6) is None
    assert accepted == ["todo.txt"]
    assert (spool_dir / ".claimed" / "todo.txt").exists()


async def test_the_local_runner_times_out_and_kills_the_whole_group(tmp_path: Path) -> None:
    """A runner past its timeout is stopped with its whole group (a grandchild too) and
    reported timed out; its output is in the attempt log."""
    log = tmp_path / "0.1.log"
    proc = spawn(
        Launch(
            # Nothing but the timeout ends it within the test's deadline.
            argv=[sys.executable, str(FAKE_AGENT), "stdout=hello grandchild=600 sleep=600"],
            env={**os.environ, "FAKE_AGENT_LOG": str(tmp_path / "agent.jsonl")},
            cwd=str(tmp_path),
            log_path=log,
            # Counted from wait(), which starts once the agent has its SIGTERM handler.
            timeout=2.0,
            kill_grace=0.5,
        )
    )
    # The agent notes "start" once its SIGTERM handler is in place (the exit code 143
    # checked below), then prints at once: only then does the timeout begin to run.
    await until(lambda: (tmp_path / "agent.jsonl").exists(), "the agent started")
    with anyio.fail_after(60):
        raw = await proc.wait()
    assert raw.timed_out and not raw.interrupted and raw.exit_code == 143  # its SIGTERM handler
    assert "hello" in log.read_text()
    from batchd import procfs

    assert procfs.group_members(proc.pid) == []


async def test_a_runner_that_closes_its_output_early_runs_to_its_end(tmp_path: Path) -> None:
    """Both pipes at their end is not the end of the run: a runner that closes stdout and
    stderr (as coreutils' atexit handler does, or ``exec >&-``) and goes on working is
    waited for, never killed (a regression: it got SIGTERM, 'killed by signal 15')."""
    done = tmp_path / "done"
    script = 'echo early; exec >&- 2>&-; sleep 0.5; echo finished > "$1"'
    proc = spawn(
        Launch(
            argv=["sh", "-c", script, "sh", str(done)],
            env=dict(os.environ),
            cwd=str(tmp_path),
            log_path=tmp_path / "0.1.log",
        )
    )
    with anyio.fail_after(60):
        raw = await proc.wait()
    assert raw.exit_code == 0 and raw.signal is None, raw
    assert done.read_text() == "finished\n"
    assert raw.stdout_tail == b"early\n"


async def test_the_local_runner_stops_on_request(tmp_path: Path) -> None:
    """stop() ends a run at once (SIGTERM to the group) and the result says interrupted."""
    proc = spawn(
        Launch(
            argv=[sys.executable, str(FAKE_AGENT), "sleep=60"],
            env={**os.environ, "FAKE_AGENT_LOG": str(tmp_path / "agent.jsonl")},
            cwd=str(tmp_path),
            log_path=None,
        )
    )
    results = []

    async def wait() -> None:
        results.append(await proc.wait())

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await until(lambda: (tmp_path / "agent.jsonl").exists(), "the agent started")
        proc.stop("test")
    [raw] = results
    assert raw.interrupted and not raw.timed_out and proc.stop_reason == "test"
