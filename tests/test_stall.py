"""``runner.stall_timeout`` (SPEC 13) on real processes, on both backends.

A runner that writes nothing on stdout or stderr for ``stall_timeout`` seconds
is stopped with its whole group, like a timeout, and judged ``timed_out``,
transient, ``stalled: no output for N s (runner.stall_timeout)``; one that
keeps printing is left alone. The local engine gets the setting from the
runner profile through ``launch.spec``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
import pytest

from batchd import launch, procfs
from batchd.batch import new_batch
from batchd.classify import Classifier, RawResult, RunnerTraits
from batchd.config import RunnerConfig
from batchd.engines import LaunchSpec
from batchd.engines.local import LocalEngine
from batchd.parse import ParsedBatch

pytestmark = pytest.mark.anyio

# Writes the wall-clock time to $1, prints (its last output), then is silent (a
# grandchild too, holding the pipes) until something stops it.
SILENT = 'date +%s.%N > "$1"; echo working; sleep 600 & exec sleep 600'


async def run_local(
    tmp_path: Path, argv: list[str], stall: float, kill_grace: float = 10.0
) -> tuple[RawResult, int]:
    """Run ``argv`` on the local engine (its keeper enforces the stall timeout); the result
    and the group's pid."""
    spec = LaunchSpec(
        run_id="stall-test",
        argv=argv,
        env=dict(os.environ),
        cwd=str(tmp_path),
        log_path=tmp_path / "0.1.log",
        stall_timeout=stall,
        kill_grace=kill_grace,
    )
    engine = LocalEngine()
    try:
        run = await engine.start(spec)
        with anyio.fail_after(60):
            raw = await run.wait()
    finally:
        await engine.aclose()
    assert run.ref.pid is not None
    return raw, run.ref.pid


async def test_a_silent_runner_is_stopped_within_the_stall_timeout_and_a_second(
    tmp_path: Path,
) -> None:
    """Silent past stall_timeout: the group is killed within stall_timeout + 1 s of the
    last output, and the result says it stalled (not timed out, not a foreign signal)."""
    stamp = tmp_path / "last-output"
    raw, pid = await run_local(tmp_path, ["sh", "-c", SILENT, "sh", str(stamp)], 1.5, 5.0)
    stopped = time.time()
    assert raw.stalled and not raw.timed_out and not raw.interrupted, raw
    assert raw.signal is None and raw.stdout_tail == b"working\n"
    assert stopped - float(stamp.read_text()) <= 1.5 + 1.0
    assert procfs.group_members(pid) == []
    v = Classifier.build().judge(raw, RunnerTraits(stall_timeout_s=1.5))
    assert (v.outcome, v.failure_type) == ("timed_out", "transient")
    assert v.message == "stalled: no output for 1.5 s (runner.stall_timeout)"


async def test_a_runner_that_keeps_printing_is_not_stopped(tmp_path: Path) -> None:
    """Output every 0.2 s (stdout and stderr in turn) for 4 s under a 2 s stall timeout:
    it runs to its end and completes."""
    script = (
        "import sys, time\n"
        "for i in range(20):\n"
        "    (sys.stdout if i % 2 else sys.stderr).write(f'tick {i}\\n')\n"
        "    sys.stdout.flush(); sys.stderr.flush(); time.sleep(0.2)\n"
    )
    raw, _ = await run_local(tmp_path, [sys.executable, "-c", script], 2.0)
    assert (raw.exit_code, raw.stalled, raw.timed_out) == (0, False, False), raw
    assert b"tick 19" in raw.stdout_tail and b"tick 18" in raw.stderr_tail
    assert Classifier.build().judge(raw, "auto").outcome == "completed"


async def test_stderr_alone_keeps_a_runner_alive(tmp_path: Path) -> None:
    """Output on stderr counts as much as stdout: a runner chatting on stderr only is
    not stalled."""
    script = "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick >&2; sleep 0.2; done"
    raw, _ = await run_local(tmp_path, ["sh", "-c", script], 1.5)
    assert (raw.exit_code, raw.stalled) == (0, False), raw


async def test_the_local_engine_takes_the_stall_timeout_from_the_spec(tmp_path: Path) -> None:
    """``launch.spec`` carries runner.stall_timeout to the local engine, which stops a
    silent runner; the verdict names the setting."""
    command = ["sh", "-c", SILENT, "sh", str(tmp_path / "t")]
    runner = RunnerConfig(command=command, stall_timeout=1.0, kill_grace=2.0)
    batch = new_batch(
        batch_id="batch-1",
        seq=1,
        parsed=ParsedBatch(features=["quiet"], name="b"),
        features_file="b.txt",
        source_sha256="ab" * 32,
        now=1_900_000_000.0,
    )
    spec = launch.spec(
        runner, os.environ, batch, 0, cwd=str(tmp_path), log_path=tmp_path / "l", run_id="r"
    )
    assert spec.stall_timeout == 1.0
    engine = LocalEngine()
    try:
        run = await engine.start(spec)
        with anyio.fail_after(60):
            raw = await run.wait()
    finally:
        await engine.aclose()
    v = Classifier.build().judge(raw, RunnerTraits.of(runner, "alice"))
    assert (v.outcome, v.failure_type, raw.stalled) == ("timed_out", "transient", True)
    assert v.message == "stalled: no output for 1 s (runner.stall_timeout)"
