"""The local engine and its keeper, driven directly: real keeper process, real runners (SPEC 16).

Each test starts runs through ``LocalEngine`` as the daemon does, with the
fake agent as the runner, and looks at what is left: the run's result, its
run file, its attempt log, the processes of its group. A "daemon restart" is
a second ``LocalEngine`` after the first one let go of its keeper (its
``aclose``, which is what a daemon's end does to the socket); the engines
share ``tmp_path`` as their state dir (its ``keepers.lock``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import anyio
import pytest

from batchd import procfs, runfile
from batchd.engines import LaunchSpec, Run, RunRef, SpawnError
from batchd.engines.local import LocalEngine
from tests.harness import FAKE_AGENT, alive, comm

pytestmark = pytest.mark.anyio


def prefix_of(tmp: Path) -> str:
    """The run id prefix of one test's runs (its "state dir"), unique across test workers."""
    return f"kt{hashlib.sha256(str(tmp).encode()).hexdigest()[:10]}-"


def spec_for(tmp: Path, words: str, **kw: object) -> LaunchSpec:
    """A run of the fake agent with ``words``, its log under ``tmp/logs``."""
    logs = tmp / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    run_id = f"{prefix_of(tmp)}b-0-1-{secrets.token_hex(4)}"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "FAKE_AGENT_LOG": str(tmp / "agent.jsonl"),
        "BATCHD_RUN_ID": run_id,
    }
    return LaunchSpec(
        run_id=run_id,
        argv=[sys.executable, str(FAKE_AGENT), words],
        env=env,
        cwd=str(tmp),
        log_path=logs / f"{secrets.token_hex(3)}.1.log",
        kill_grace=1.0,
        **kw,  # type: ignore[arg-type]
    )


def group_left(pgid: int) -> list[int]:
    """Live members of process group ``pgid``."""
    return procfs.group_members(pgid)


def keeper_of(ref: RunRef) -> int:
    """The keeper that holds the run: its runner's parent."""
    assert ref.pid is not None
    keeper = procfs.parent(ref.pid)
    assert keeper is not None and comm(keeper) == "batchd-keeper", keeper
    return keeper


async def left_running(spec: LaunchSpec) -> RunRef:
    """Start ``spec`` through a daemon's engine that then lets go (as its end does)."""
    first = LocalEngine(state_dir=Path(spec.cwd))
    run = await first.start(spec)
    await first.aclose()
    return run.ref


async def wait_until(pred: object, what: str, timeout: float = 30.0) -> None:
    """Poll ``pred()`` every 20 ms without blocking the event loop."""
    assert callable(pred)
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.02)


async def test_a_run_ends_with_its_status_tails_log_and_run_file(tmp_path: Path) -> None:
    """A run's exit status, stdout and stderr tails come back; both streams are in the log;
    the run file next to the log records the same end."""
    engine = LocalEngine(state_dir=tmp_path)
    spec = spec_for(tmp_path, "x stdout=to_stdout stderr=to_stderr exit=3")
    run = await engine.start(spec)
    assert run.ref.pid is not None and run.ref.pid_start_time is not None
    raw = await run.wait()
    await engine.aclose()
    assert raw.exit_code == 3 and not raw.interrupted and not raw.timed_out
    assert b"to stdout" in raw.stdout_tail and b"to stderr" in raw.stderr_tail
    text = spec.log_path.read_text()
    assert "to stdout" in text and "to stderr" in text
    recorded = runfile.read(runfile.path_for(spec.log_path, spec.run_id))
    assert isinstance(recorded, runfile.Ended) and recorded.exit_code == 3
    assert oct(spec.log_path.stat().st_mode & 0o777) == "0o600"


async def test_start_errors_say_what_to_fix(tmp_path: Path) -> None:
    """A missing cwd or program is a SpawnError of its kind; a log that is a symlink is an
    OSError (the batch pauses), and nothing is written through the link."""
    engine = LocalEngine(state_dir=tmp_path)
    gone = spec_for(tmp_path, "x")
    gone = LaunchSpec(**{**gone.__dict__, "cwd": str(tmp_path / "nope")})
    with pytest.raises(SpawnError) as e:
        await engine.start(gone)
    assert e.value.kind == "cwd" and "nope" in e.value.message
    missing = spec_for(tmp_path, "x")
    missing = LaunchSpec(**{**missing.__dict__, "argv": [str(tmp_path / "no-agent")]})
    with pytest.raises(SpawnError) as e:
        await engine.start(missing)
    assert e.value.kind == "runner" and "no-agent" in e.value.message
    linked = spec_for(tmp_path, "x")
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    linked.log_path.symlink_to(target)
    with pytest.raises(OSError):
        await engine.start(linked)
    assert target.read_text() == "keep\n"
    ok = await engine.start(spec_for(tmp_path, "x"))  # the keeper is fine after all that
    assert (await ok.wait()).exit_code == 0
    await engine.aclose()


async def test_timeout_ends_the_whole_group_even_what_ignores_sigterm(tmp_path: Path) -> None:
    """runner.timeout counts from the start: the group gets SIGTERM, then SIGKILL after
    kill_grace; the member that ignores SIGTERM is gone too."""
    engine = LocalEngine(state_dir=tmp_path)
    spec = spec_for(tmp_path, "x ignore_term grandchild=60 sleep=60", timeout=1.0)
    started = time.monotonic()
    run = await engine.start(spec)
    raw = await run.wait()
    await engine.aclose()
    assert raw.timed_out and not raw.interrupted
    assert 1.0 <= time.monotonic() - started < 15
    assert run.ref.pid is not None and group_left(run.ref.pid) == []


async def test_stall_timeout_stops_a_run_without_output(tmp_path: Path) -> None:
    """runner.stall_timeout: no output for that long ends the run, recorded as stalled."""
    engine = LocalEngine(state_dir=tmp_path)
    spec = spec_for(tmp_path, "x stdout=one_line sleep=60", stall_timeout=1.0)
    run = await engine.start(spec)
    raw = await run.wait()
    await engine.aclose()
    assert raw.stalled and not raw.timed_out and not raw.interrupted
    assert b"one line" in raw.stdout_tail


async def test_stop_ends_the_group_and_the_run_is_interrupted(tmp_path: Path) -> None:
    """stop (cancel, skip, pause --now, a daemon stop) ends the whole group: interrupted."""
    engine = LocalEngine(state_dir=tmp_path)
    spec = spec_for(tmp_path, "x ignore_term grandchild=60 sleep=60")
    run = await engine.start(spec)
    await wait_until(lambda: (tmp_path / "agent.jsonl").exists(), "the runner's start")
    run.stop("cancelled")
    raw = await run.wait()
    await engine.aclose()
    assert raw.interrupted
    assert run.ref.pid is not None and group_left(run.ref.pid) == []


async def test_a_leftover_child_holding_the_pipes_does_not_hang_the_end(tmp_path: Path) -> None:
    """The leader exits, a child it left holds stdout: the child is ended, the run ends."""
    engine = LocalEngine(state_dir=tmp_path)
    run = await engine.start(spec_for(tmp_path, "x grandchild=60 stdout=done"))
    with anyio.fail_after(20):
        raw = await run.wait()
    await engine.aclose()
    assert raw.exit_code == 0 and b"done" in raw.stdout_tail
    assert run.ref.pid is not None and group_left(run.ref.pid) == []


async def test_a_run_outlives_the_daemon_and_is_found_again(tmp_path: Path) -> None:
    """The daemon lets go (its end): the run goes on, its output still reaches the log; a
    new daemon re-attaches and gets the end; the keeper then exits on its own."""
    go = tmp_path / "go"
    spec = spec_for(tmp_path, f"x stdout=before wait={go} claude=ok")
    ref = await left_running(spec)  # the daemon is gone (kill -9 closes the socket alike)
    keeper = keeper_of(ref)
    assert ref.pid is not None and alive(ref.pid) and alive(keeper)
    second = LocalEngine(state_dir=tmp_path)
    found = await second.reattach(ref, spec)
    assert found is not None and found.ref == ref
    held = runfile.read(runfile.path_for(spec.log_path, spec.run_id))
    assert held == runfile.Held(keeper, procfs.start_time(keeper))  # written as it let go
    go.touch()
    raw = await found.wait()
    assert raw.exit_code == 0 and not raw.interrupted
    assert b'"type": "result"' in raw.stdout_tail  # printed while nobody waited on the pipe
    assert '"type": "result"' in spec.log_path.read_text()
    await wait_until(lambda: not alive(keeper), "the keeper's exit")
    await second.aclose()


async def test_a_run_that_ended_meanwhile_is_judged_from_its_run_file(tmp_path: Path) -> None:
    """The run ends while no daemon runs: the next one gets that end at once."""
    spec = spec_for(tmp_path, "x stderr=boom exit=7")
    ref = await left_running(spec)
    path = runfile.path_for(spec.log_path, spec.run_id)
    await wait_until(lambda: isinstance(runfile.read(path), runfile.Ended), "the record")
    found = await LocalEngine(state_dir=tmp_path).reattach(ref, spec)
    assert found is not None
    raw = await found.wait()
    assert raw.exit_code == 7 and b"boom" in raw.stderr_tail


async def test_timeout_counts_from_the_start_across_a_restart(tmp_path: Path) -> None:
    """The keeper enforces runner.timeout while no daemon runs and after one re-attached:
    counted from the run's start."""
    spec = spec_for(tmp_path, "x sleep=60", timeout=3.0)
    started = time.monotonic()
    ref = await left_running(spec)
    await anyio.sleep(1.5)  # the daemon is away for half the time limit
    found = await LocalEngine(state_dir=tmp_path).reattach(ref, spec)
    assert found is not None
    raw = await found.wait()
    assert raw.timed_out
    assert 3.0 <= time.monotonic() - started < 3.0 + 4.0  # not 1.5 + 3 s or more


async def test_stop_of_a_found_run_ends_its_whole_group(tmp_path: Path) -> None:
    """cancel of a re-attached run: its group (with a member ignoring SIGTERM) is gone."""
    spec = spec_for(tmp_path, "x ignore_term grandchild=60 sleep=60")
    ref = await left_running(spec)
    found = await LocalEngine(state_dir=tmp_path).reattach(ref, spec)
    assert found is not None and ref.pid is not None
    found.stop("cancelled")
    raw = await found.wait()
    assert raw.interrupted and group_left(ref.pid) == []


# Waits for the file named in argv[1], then writes 5,000 bytes and a last line.
CHATTY = (
    "import os, sys, time\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.01)\n"
    "sys.stdout.write('x' * 5000 + '\\nthe last line\\n')\n"
)


async def test_the_log_cap_holds_across_a_restart(tmp_path: Path) -> None:
    """max_log_bytes: head, marker, tail, for output written after the daemon let go and
    another re-attached."""
    go = tmp_path / "go"
    spec = spec_for(tmp_path, "x", max_log_bytes=1000)
    spec = LaunchSpec(**{**spec.__dict__, "argv": [sys.executable, "-c", CHATTY, str(go)]})
    ref = await left_running(spec)
    found = await LocalEngine(state_dir=tmp_path).reattach(ref, spec)
    assert found is not None
    go.touch()
    raw = await found.wait()
    text = spec.log_path.read_text()
    assert raw.exit_code == 0 and raw.output_bytes == 5015
    head, marker, tail = text.partition("[batchd: 4015 bytes omitted here")
    assert head == "x" * 500 + "\n" and marker
    assert tail.endswith("x" * 485 + "\nthe last line\n")


async def test_a_run_nothing_holds_is_ended_and_interrupted(tmp_path: Path) -> None:
    """The keeper was killed (a reboot would take the runner too): the runner left without
    a reader is ended at re-attach, and the attempt is interrupted (None)."""
    spec = spec_for(tmp_path, "x sleep=60")
    ref = await left_running(spec)
    keeper = keeper_of(ref)
    os.kill(keeper, signal.SIGKILL)
    await wait_until(lambda: not alive(keeper), "the keeper's death")
    assert ref.pid is not None and alive(ref.pid)
    assert await LocalEngine(state_dir=tmp_path).reattach(ref, spec) is None
    assert not alive(ref.pid) and group_left(ref.pid) == []


async def test_a_keeper_killed_under_the_daemon_interrupts_its_runs(tmp_path: Path) -> None:
    """The keeper dies while the daemon waits: the run is interrupted (its runner ended),
    and the next start gets a new keeper."""
    engine = LocalEngine(state_dir=tmp_path)
    spec = spec_for(tmp_path, "x sleep=60")
    run = await engine.start(spec)
    keeper = keeper_of(run.ref)
    os.kill(keeper, signal.SIGKILL)
    raw = await run.wait()
    assert raw.interrupted
    assert run.ref.pid is not None and not alive(run.ref.pid)
    again = spec_for(tmp_path, "x sleep=60")
    second = await engine.start(again)
    assert keeper_of(second.ref) != keeper
    second.stop("done")
    assert (await second.wait()).interrupted
    await engine.aclose()


async def test_sigterm_to_the_keeper_stops_its_runs(tmp_path: Path) -> None:
    """SIGTERM to the keeper (a system shutdown): every run is stopped and recorded as
    stopped, which the daemon takes for an interruption; then the keeper exits."""
    engine = LocalEngine(state_dir=tmp_path)
    spec = spec_for(tmp_path, "x sleep=60")
    run = await engine.start(spec)
    keeper = keeper_of(run.ref)
    os.kill(keeper, signal.SIGTERM)
    raw = await run.wait()
    assert raw.interrupted
    path = runfile.path_for(spec.log_path, spec.run_id)
    await wait_until(lambda: isinstance(runfile.read(path), runfile.Ended), "the record")
    recorded = runfile.read(path)
    assert isinstance(recorded, runfile.Ended) and recorded.stopped
    await wait_until(lambda: not alive(keeper), "the keeper's exit")
    await engine.aclose()


async def test_stop_orphans_spares_the_runs_it_knows(tmp_path: Path) -> None:
    """At start-up, runs of this state dir that no attempt records are stopped; a known
    (re-attached) one is left alone."""
    engine = LocalEngine(state_dir=tmp_path)
    known = await engine.start(spec_for(tmp_path, "x sleep=60"))
    unknown = await engine.start(spec_for(tmp_path, "x sleep=60"))
    assert isinstance(known.ref.pid, int) and isinstance(unknown.ref.pid, int)
    prefix = prefix_of(tmp_path)
    # Both runners have exec'd (a forked child shows its keeper's environment until then).
    for pid in (known.ref.pid, unknown.ref.pid):
        await wait_until(lambda p=pid: procfs.env_value(p, "BATCHD_RUN_ID"), "the runner's exec")
    known_id = procfs.env_value(known.ref.pid, "BATCHD_RUN_ID")
    assert known_id is not None
    stopped = await engine.stop_orphans(prefix, {known_id})
    assert len(stopped) == 1 and str(unknown.ref.pid) in stopped[0]
    assert alive(known.ref.pid)
    assert (await unknown.wait()).exit_code in (143, None)  # ended by SIGTERM
    known.stop("done")
    assert (await known.wait()).interrupted
    await engine.aclose()


async def test_a_new_daemon_waits_for_the_run_files_of_the_old_keeper(tmp_path: Path) -> None:
    """The daemon that starts next looks for runs only once the previous keeper has written
    its run files (it holds keepers.lock until then): a keeper slow to write them (here
    frozen with SIGSTOP) does not make a live run look lost."""
    spec = spec_for(tmp_path, "x sleep=60")
    first = LocalEngine(state_dir=tmp_path)
    run = await first.start(spec)
    keeper = keeper_of(run.ref)
    os.kill(keeper, signal.SIGSTOP)
    await first.aclose()
    found: list[Run | None] = []

    async def look() -> None:
        found.append(await LocalEngine(state_dir=tmp_path).reattach(run.ref, spec))

    async with anyio.create_task_group() as tg:
        tg.start_soon(look)
        try:
            await anyio.sleep(0.5)  # what would be time enough to take the run for lost
            assert found == []
        finally:
            os.kill(keeper, signal.SIGCONT)  # never leave it frozen, even on a failure
    [again] = found
    assert again is not None and run.ref.pid is not None and alive(run.ref.pid)
    again.stop("done")
    assert (await again.wait()).interrupted


def test_run_file_records_round_trip_and_garbage_reads_as_none(tmp_path: Path) -> None:
    """A run file holds one record, read back as written; anything else (empty, cut short,
    another version, a link) reads as no record; a killed writer's temp file can go."""
    path = runfile.path_for(tmp_path / "0.1.log", "key-batch-0-1-abcd1234")
    assert path.name == "0.1.log.local-abcd1234.exit"
    ended = runfile.Ended(exit_code=None, signal=9, output_bytes=3, stdout_tail=b"\x00\xff")
    for record in (runfile.Held(42, 7), ended):
        runfile.write(path, record)
        assert runfile.read(path) == record
    for junk in (b"", b'{"v": 1, "exit', b'{"v": 2, "held_by": 1}', b'{"v": 1, "what": 1}'):
        path.write_bytes(junk)
        assert runfile.read(path) is None
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(runfile.encode(runfile.Held(1, 1)))
    assert runfile.read(path) is None
    temp = path.with_name(path.name + ".tmp")
    temp.write_bytes(b"cut")
    runfile.discard_temp(path)
    assert not temp.exists()
