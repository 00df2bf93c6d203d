"""The check after an attempt the agent called completed (SPEC 14): run it, and word its end.

``run_check`` runs the check's argv (never through a shell) in the
feature's cwd with the runner's environment plus ``BATCHD_VERIFY=1``, in its own
process group, through ``engines.process`` (stopped like a runner: SIGTERM to the
group, ``kill_grace``, SIGKILL, on ``verify.timeout``, ``Check.stop`` or
cancellation). A line ``--- verify: ARGV ---`` goes into the attempt log first,
then the check's raw output. The result carries the exit code, the duration, the
last 16 KiB of output (raw, for the feedback file) and its last lines (sanitised,
for the message and the state).

``failure_message`` and ``summary`` are pure: the wording of a failed check;
``from_job`` words the same way a check an engine ran itself (inside a Slurm job).

What this module must never do: decide what a failed check means for the attempt
(``verify.failure`` and the retry decision are the caller's), or pass the argv
through a shell.

Cancellation: ``Check.wait`` (and ``run_check``) kill the check's whole group,
shielded and bounded by ``kill_grace``, before the cancellation proceeds.
"""

from __future__ import annotations

import errno
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from batchd.classify import MAX_MESSAGE_CHARS, JobCheck, sanitize
from batchd.engines.process import Launch, Process, spawn
from batchd.model import VerifyResult

OUTPUT_TAIL = 16 * 1024  # raw bytes of output kept for the feedback file
SUMMARY_CHARS = 900  # the last lines kept in the state (VerifyResult.output_tail)
CHANGED_NOTHING = "the agent changed nothing"
_SEPARATOR = " | "
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    exit_code: int | None  # None: it timed out, was stopped, or was killed by a signal
    signal: int | None  # the signal that killed it, when not sent by batchd
    duration_s: float
    timeout: float  # verify.timeout it ran under (0 = none)
    timed_out: bool
    stopped: bool  # Check.stop (cancel, daemon stop): the attempt is interrupted, not failed
    output_tail: bytes  # the last OUTPUT_TAIL bytes of its output, raw, as the log has them
    summary: str  # its last lines, sanitised, at most SUMMARY_CHARS
    log_error: str | None  # why the log is incomplete (a full disk), else None
    cut_short: str | None = None  # why it never ended on its own (its Slurm job ended under it)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def verify_result(self) -> VerifyResult:
        """The ``verify`` field of the attempt."""
        return VerifyResult(
            exit_code=self.exit_code, duration_s=round(self.duration_s, 3), output_tail=self.summary
        )


# --- wording (pure) -----------------------------------------------------------------------


def header_line(argv: list[str]) -> str:
    """``--- verify: make test ---``: the argv as a shell would quote it (shown, never run)."""
    return f"--- verify: {sanitize(shlex.join(argv), 500)} ---"


def summary(output: bytes, limit: int = SUMMARY_CHARS) -> str:
    """The last non-empty lines of ``output``, sanitised, joined by `` | ``, at most ``limit``
    characters; a last line longer than that keeps its end after ``…``."""
    picked: list[str] = []
    used = 0
    for raw in reversed(output.decode("utf-8", "replace").splitlines()):
        line = sanitize(raw, sys.maxsize).strip()
        if not line:
            continue
        cost = len(line) + (len(_SEPARATOR) if picked else 0)
        if used + cost > limit:
            if not picked:
                picked.append("…" + line[len(line) - limit + 1 :])
            break
        picked.append(line)
        used += cost
    return _SEPARATOR.join(reversed(picked))


def failure_message(result: CheckResult) -> str:
    """``verify failed (exit N): <last lines>``, or the timeout (naming ``verify.timeout``),
    the signal, or the stop; at most 1000 characters like every message."""
    if result.stopped:
        head = "verify stopped before it ended"
    elif result.cut_short is not None:
        head = f"verify did not finish: {result.cut_short}"
    elif result.timed_out:
        head = f"verify failed: timed out after {result.timeout:g} s (verify.timeout)"
    elif result.exit_code is None:
        head = f"verify failed (killed by signal {result.signal})"
    else:
        head = f"verify failed (exit {result.exit_code})"
    tail = summary(result.output_tail, MAX_MESSAGE_CHARS - len(head) - 2)
    return f"{head}: {tail or '(no output)'}"


def from_job(check: JobCheck) -> CheckResult:
    """The result of a check that an engine ran itself (inside a Slurm job), worded as one
    run here: its exit code, its time limit, the last lines of its output."""
    tail = check.output_tail[-OUTPUT_TAIL:]
    return CheckResult(
        exit_code=None if check.timed_out else check.exit_code,
        signal=None,
        duration_s=check.duration_s,
        timeout=check.timeout,
        timed_out=check.timed_out,
        stopped=False,
        output_tail=tail,
        summary=summary(tail),
        log_error=None,
        cut_short=check.cut_short,
    )


# --- running it ---------------------------------------------------------------------------


class Check:
    """A started check; ``wait`` for its result, ``stop`` to end it now."""

    def __init__(self, process: Process, log_path: Path, output_from: int | None) -> None:
        self._process = process
        self._log_path = log_path
        self._output_from = output_from  # where its output starts in the log; None: unknown
        self._started = time.monotonic()

    @property
    def pid(self) -> int:
        """The group leader (and the group id), to record while it runs."""
        return self._process.pid

    @property
    def start_time(self) -> int | None:
        return self._process.start_time

    def stop(self, reason: str) -> None:
        """End the check now (its group gets SIGTERM, then SIGKILL); idempotent."""
        self._process.stop(reason)

    async def wait(self) -> CheckResult:
        raw = await self._process.wait()
        duration = time.monotonic() - self._started
        tail = self._tail_from_log() if raw.log_error is None else None
        if tail is None:  # no log to read back: the two streams' tails, one after the other
            tail = (raw.stdout_tail + raw.stderr_tail)[-OUTPUT_TAIL:]
        return CheckResult(
            exit_code=raw.exit_code,
            signal=raw.signal,
            duration_s=duration,
            timeout=self._process.launch.timeout,
            timed_out=raw.timed_out,
            stopped=raw.interrupted,
            output_tail=tail,
            summary=summary(tail),
            log_error=raw.log_error,
        )

    def _tail_from_log(self) -> bytes | None:
        """The last OUTPUT_TAIL bytes after the header: stdout and stderr in the order they came."""
        if self._output_from is None:
            return None
        try:
            fd = os.open(self._log_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            start = max(self._output_from, size - OUTPUT_TAIL)
            return os.pread(fd, max(0, size - start), start)
        except OSError:
            return None
        finally:
            os.close(fd)


async def run_check(
    argv: list[str],
    *,
    cwd: str,
    env: Mapping[str, str],
    log_path: Path,
    timeout: float,
    kill_grace: float,
    max_log_bytes: int = 10 * 1024 * 1024,
    on_start: Callable[[Check], None] | None = None,
) -> CheckResult:
    """Append the header to the attempt log, run the check, and return its result.

    ``on_start`` gets the started ``Check`` at once (to record its pid, or to
    ``stop`` it later). ``SpawnError`` when it cannot start (``cwd``: the directory
    is gone; ``runner``: the program is missing or not executable): trouble that is
    not the feature's.
    """
    if not argv:
        raise ValueError("the check's argv is empty")
    output_from = _append_header(log_path, argv)
    launch = Launch(
        argv=list(argv),
        env={**env, "BATCHD_VERIFY": "1"},
        cwd=cwd,
        log_path=log_path,
        timeout=timeout,
        kill_grace=kill_grace,
        max_log_bytes=max_log_bytes,
        what="check",
    )
    check = Check(spawn(launch), log_path, output_from)
    if on_start is not None:
        on_start(check)
    return await check.wait()


def _append_header(log_path: Path, argv: list[str]) -> int | None:
    """Append the header line (on a line of its own) to the log; the log's size after it,
    or None when there was no room to write it (the check runs all the same)."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    line = header_line(argv).encode() + b"\n"
    try:
        fd = os.open(log_path, flags, 0o600)
        try:
            size = os.fstat(fd).st_size
            lead = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
            os.write(fd, lead + line)
            return os.fstat(fd).st_size
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise  # a link where the log should be, a missing directory: not to run past
        return None
