"""The check after a completed attempt (SPEC 14): real processes on both backends, and its
wording (pure)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from batchd import procfs, verify
from batchd.engines import SpawnError
from batchd.engines.process import Launch, spawn
from batchd.verify import CheckResult
from tests.harness import alive

PY = sys.executable


def result(**kw: object) -> CheckResult:
    base: dict[str, object] = {
        "exit_code": 1,
        "signal": None,
        "duration_s": 1.0,
        "timeout": 1800.0,
        "timed_out": False,
        "stopped": False,
        "output_tail": b"",
        "summary": "",
        "log_error": None,
    }
    return CheckResult(**{**base, **kw})  # type: ignore[arg-type]


async def agent_writes(log: Path, text: str, cwd: Path) -> None:
    """A real 'agent' process whose output goes to the attempt log first."""
    proc = spawn(
        Launch(
            argv=["sh", "-c", 'printf "%s" "$1"', "sh", text],
            env=dict(os.environ),
            cwd=str(cwd),
            log_path=log,
        )
    )
    with anyio.fail_after(60):
        await proc.wait()


async def check(argv: list[str], tmp_path: Path, timeout: float = 60.0, **env: str) -> CheckResult:
    with anyio.fail_after(120):
        return await verify.run_check(
            argv,
            cwd=str(tmp_path),
            env={**os.environ, **env},
            log_path=tmp_path / "0.1.log",
            timeout=timeout,
            kill_grace=0.5,
        )


# --- real processes ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_passing_check_runs_in_the_cwd_with_batchd_verify_and_logs_under_its_header(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Exit 0 passes; the check sees BATCHD_VERIFY=1, the runner's environment and the cwd;
    its output follows the agent's in the same log, after ``--- verify: ARGV ---`` on a line
    of its own (the agent's last line had no newline)."""
    log = tmp_path / "0.1.log"
    await agent_writes(log, "agent: done, no newline", tmp_path)
    script = "import os; print('verify', os.environ['BATCHD_VERIFY'], os.environ['FROM_RUNNER'], os.getcwd())"
    r = await check([PY, "-c", script], tmp_path, FROM_RUNNER="yes")
    assert r.passed and r.exit_code == 0 and not r.timed_out and not r.stopped
    assert r.summary == f"verify 1 yes {tmp_path}"
    header = verify.header_line([PY, "-c", script])
    assert log.read_text() == f"agent: done, no newline\n{header}\nverify 1 yes {tmp_path}\n"
    assert header.startswith(f"--- verify: {PY} -c 'import os;") and header.endswith(" ---")
    assert os.stat(log).st_mode & 0o777 == 0o600
    assert r.verify_result().exit_code == 0 and r.verify_result().output_tail == r.summary


@pytest.mark.anyio
async def test_a_failing_check_gives_its_exit_code_and_last_lines_both_streams_in_order(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Exit 3 with 100 KiB of stdout then an error on stderr: the raw tail is the last 16 KiB
    as the log has it (the stderr line last), the message ``verify failed (exit 3): ...``
    ends with the last lines and stays within 1000 characters."""
    script = (
        "import sys\n"
        "for i in range(2000): print(f'test_{i:04d} ' + 'x' * 40)\n"
        "sys.stdout.flush()\n"
        "print('E   assert 1 == 2', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    r = await check([PY, "-c", script], tmp_path)
    assert r.exit_code == 3 and not r.passed
    assert len(r.output_tail) == verify.OUTPUT_TAIL
    assert r.output_tail.endswith(b"test_1999 " + b"x" * 40 + b"\nE   assert 1 == 2\n")
    message = verify.failure_message(r)
    assert message.startswith("verify failed (exit 3): ") and len(message) <= 1000
    assert message.endswith("test_1999 " + "x" * 40 + " | E   assert 1 == 2")
    assert (tmp_path / "0.1.log").read_bytes().endswith(r.output_tail)


@pytest.mark.anyio
async def test_a_check_that_hangs_is_stopped_at_verify_timeout_with_its_whole_group(
    tmp_path: Path, anyio_backend: str
) -> None:
    """Past ``timeout`` the check and its children (one ignoring SIGTERM) are killed, nothing
    of the group is left, and the message names verify.timeout."""
    pids = tmp_path / "pids"
    script = f"trap '' TERM; echo $$ >> {pids}; sleep 600 & echo $! >> {pids}; echo started; wait"
    started = anyio.current_time()
    r = await check(["sh", "-c", script], tmp_path, timeout=2.0)
    assert r.timed_out and r.exit_code is None and not r.stopped
    assert anyio.current_time() - started < 60
    assert verify.failure_message(r) == (
        "verify failed: timed out after 2 s (verify.timeout): started"
    )
    members = [int(p) for p in pids.read_text().split()]
    assert len(members) == 2 and not any(alive(p) for p in members)
    assert procfs.group_members(members[0]) == []


@pytest.mark.anyio
async def test_stop_ends_a_running_check_which_reads_stopped(
    tmp_path: Path, anyio_backend: str
) -> None:
    """``Check.stop`` (cancel, daemon stop) ends it at once: stopped, no exit code, gone."""
    marker = tmp_path / "running"
    started: list[verify.Check] = []
    results: list[CheckResult] = []

    async def run() -> None:
        r = await verify.run_check(
            ["sh", "-c", f"touch {marker}; exec sleep 600"],
            cwd=str(tmp_path),
            env=dict(os.environ),
            log_path=tmp_path / "0.1.log",
            timeout=0,
            kill_grace=0.5,
            on_start=started.append,
        )
        results.append(r)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while not marker.exists():
                await anyio.sleep(0.01)
            [running] = started
            running.stop("cancelled by the user")
    [r] = results
    assert r.stopped and r.exit_code is None and not r.timed_out
    assert verify.failure_message(r).startswith("verify stopped")
    assert not alive(running.pid)


@pytest.mark.anyio
async def test_cancelling_the_wait_kills_the_check(tmp_path: Path, anyio_backend: str) -> None:
    """A cancelled ``run_check`` leaves no process behind."""
    pid_file = tmp_path / "pid"
    with anyio.move_on_after(60) as outer:
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await check(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 600"], tmp_path)

            tg.start_soon(run)
            while not pid_file.exists() or not pid_file.read_text().strip():
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert not outer.cancelled_caught
    assert not alive(int(pid_file.read_text()))


@pytest.mark.anyio
async def test_output_with_escapes_and_secrets_is_raw_in_the_log_and_clean_in_the_message(
    tmp_path: Path, anyio_backend: str
) -> None:
    """The log and the raw tail keep the bytes; the summary has no escape sequence and no
    token."""
    script = r"printf '\033[31mFAILED\033[0m token=sk-ant-api03-abcdefghijklmnop\n'; exit 1"
    r = await check(["sh", "-c", script], tmp_path)
    assert b"\x1b[31m" in r.output_tail and b"sk-ant-api03" in r.output_tail
    assert r.summary == "FAILED token=[REDACTED]"
    assert verify.failure_message(r) == "verify failed (exit 1): FAILED token=[REDACTED]"


@pytest.mark.anyio
async def test_a_check_that_cannot_start_is_a_spawn_error(
    tmp_path: Path, anyio_backend: str
) -> None:
    """A missing program is not the feature's fault: SpawnError, as for a runner."""
    with pytest.raises(SpawnError) as e:
        await check([str(tmp_path / "no-such-check")], tmp_path)
    assert e.value.kind == "runner" and "no-such-check" in e.value.message


# --- wording ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"exit_code": 2, "output_tail": b"a\n\nb\n"}, "verify failed (exit 2): a | b"),
        ({"exit_code": 1}, "verify failed (exit 1): (no output)"),
        (
            {"exit_code": None, "signal": 9, "output_tail": b"x"},
            "verify failed (killed by signal 9): x",
        ),
        (
            {"exit_code": None, "timed_out": True, "timeout": 1800.0, "output_tail": b"slow\n"},
            "verify failed: timed out after 1800 s (verify.timeout): slow",
        ),
    ],
)
def test_the_wording_of_a_failed_check(kw: dict[str, object], message: str) -> None:
    """``verify failed (exit N): <last lines>``, and the timeout names verify.timeout."""
    assert verify.failure_message(result(**kw)) == message


def test_the_summary_keeps_the_last_lines_that_fit() -> None:
    """Lines are taken from the end while they fit; a single long last line keeps its end."""
    assert verify.summary(b"one\ntwo\nthree\n", limit=11) == "two | three"
    assert verify.summary(b"one\ntwo\nthree\n", limit=100) == "one | two | three"
    assert verify.summary(b"x" * 50 + b"END", limit=10) == "…xxxxxxEND"
    assert verify.summary(b"\r\n\x1b[2K\n", limit=10) == ""
