"""A local process group: spawn, stream output to a log, time out, kill the whole group.

Owns the lifecycle of every process batchd starts on this machine (runner
attempts of the local engine, and hooks): spawning without a shell in a new
session, waiting through a pidfd, draining stdout and stderr (the attempt log
keeps head and tail past ``max_log_bytes``: ``output``; the last bytes of each
stream are kept in memory for classification, and stdout is fed to
``agents.CodexStream`` as it arrives, so the facts of a long codex run are
exact however far past the tail it went), and killing the process group
(SIGTERM, grace, SIGKILL) on timeout, on a stall (``stall_timeout`` seconds
without a byte on stdout or stderr), on stop, and when the leader leaves
members behind. It never decides what an outcome means: that is ``classify``.

Cancellation: ``Process.wait`` cleans up under a shield; when it is cancelled
the group is killed and reaped before the cancellation proceeds.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from batchd import procfs
from batchd.agents import CodexStream
from batchd.classify import RawResult
from batchd.engines import RunRef, SpawnError
from batchd.engines.output import LogSink, Tail

STDERR_TAIL = 64 * 1024
STDOUT_TAIL = 256 * 1024
_CHUNK = 64 * 1024
_DRAIN_AFTER_EXIT_S = 2.0  # a setsid() grandchild can hold the pipe: stop reading after this
_POLL_S = 0.02


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphaned descendants of runners are re-parented to us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER = 36
    except (OSError, AttributeError):
        return False


_KNOWN_CHILDREN: set[int] = set()


def reap_orphans() -> int:
    """Reap adopted orphans that have exited (never our own runner or hook children)."""
    reaped = 0
    for pid in procfs.children(os.getpid()):
        if pid in _KNOWN_CHILDREN:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
    return reaped


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def kill_group(
    pgid: int, grace: float, leader: subprocess.Popen[bytes] | None = None
) -> None:
    """SIGTERM the group, wait up to ``grace``, SIGKILL what is left; reap as we go.

    Call it shielded. Returns at once when nothing of the group is left (the usual
    case once the leader exited by itself); else when no live member is left (or
    after a bounded wait for members that are zombies of other parents).
    """
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if _group_gone(pgid, leader):
            return
        _signal_group(pgid, sig)
        # SIGCONT so that a stopped member can act on SIGTERM.
        if sig == signal.SIGTERM:
            _signal_group(pgid, signal.SIGCONT)
        deadline = time.monotonic() + wait_s
        while not _group_gone(pgid, leader):
            if time.monotonic() >= deadline:
                break
            await anyio.sleep(_POLL_S)
        else:
            return


def _group_gone(pgid: int, leader: subprocess.Popen[bytes] | None) -> bool:
    """No live member left in the group (our own leader and adopted orphans reaped)."""
    if leader is not None and leader.returncode is None:
        leader.poll()
    if not _group_alive(pgid):
        return True
    reap_orphans()
    return not _group_alive(pgid) or not procfs.group_members(pgid)


# --- spawning and waiting ---------------------------------------------------------


@dataclass
class Launch:
    """One process to start; ``what`` names it in errors (``runner``, ``hook after_feature``)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    log_path: Path | None
    timeout: float = 0.0  # 0 = none
    kill_grace: float = 10.0
    max_log_bytes: int = 10 * 1024 * 1024
    stall_timeout: float = 0.0  # seconds without output before it is stopped; 0 = none
    tail_caps: tuple[int, int] = field(default=(STDOUT_TAIL, STDERR_TAIL))
    what: str = "runner"


def spawn(launch: Launch) -> Process:
    """Start the process in its own session; raise ``SpawnError`` if it cannot start."""
    if not os.path.isdir(launch.cwd):
        raise SpawnError("cwd", f"working directory {launch.cwd} does not exist")
    sink = LogSink(launch.log_path, launch.max_log_bytes)
    try:
        proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=launch.cwd,
            env=launch.env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        sink.close()
        program = launch.argv[0] if launch.argv else "?"
        if e.filename == launch.cwd and not os.path.isdir(launch.cwd):
            raise SpawnError("cwd", f"working directory {launch.cwd} does not exist") from None
        why = e.strerror or str(e)
        raise SpawnError("runner", f"cannot start {launch.what} {program!r}: {why}") from None
    _KNOWN_CHILDREN.add(proc.pid)
    return Process(proc, launch, sink)


class Process:
    """A started process group; also the local engine's ``Run``."""

    def __init__(self, proc: subprocess.Popen[bytes], launch: Launch, sink: LogSink) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.start_time = procfs.start_time(proc.pid)
        self.launch = launch
        self.sink = sink
        self.stdout = Tail(launch.tail_caps[0])
        self.stderr = Tail(launch.tail_caps[1])
        self.codex = CodexStream()
        self.stalled = False
        self._last_output = 0.0  # anyio.current_time() of the last byte read; set by wait
        self._stop_scope: anyio.CancelScope | None = None
        self.stop_reason: str | None = None
        assert proc.stdout is not None and proc.stderr is not None
        self._fds = (proc.stdout.fileno(), proc.stderr.fileno())
        self._open = set(self._fds)
        self._exited = False
        self._epoll = select.epoll(3)
        for fd in self._fds:
            os.set_blocking(fd, False)
            self._epoll.register(fd, select.EPOLLIN)
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except OSError:
            self._pidfd = None  # a kernel before 5.3: the exit is polled
        else:
            self._epoll.register(self._pidfd, select.EPOLLIN)

    @property
    def ref(self) -> RunRef:
        return RunRef(pid=self.pid, pid_start_time=self.start_time)

    def describe(self) -> str | None:
        return None

    def stop(self, reason: str) -> None:
        """Ask ``wait`` to end the run now (the group is killed; the run is 'interrupted')."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._stop_scope is not None:
            self._stop_scope.cancel()

    def _read(self, fd: int) -> bool:
        """Read what the pipe holds into the tail and the log; False at its end."""
        tail = self.stdout if fd == self._fds[0] else self.stderr
        while True:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                return True
            if not data:
                self._epoll.unregister(fd)
                self._open.discard(fd)
                return False
            tail.add(data)
            self.sink.write(data)
            self._last_output = anyio.current_time()
            if tail is self.stdout:
                self.codex.feed(data)

    async def _pump(self, until_exit: bool) -> None:
        """Drain both pipes until the leader exits (``until_exit``) or until both end.

        One epoll set holds the two pipes and the leader's pidfd, and the loop waits
        on that set alone: one coroutine per run instead of a reader task per pipe
        and a waiter for the exit. Until the exit, ``stall_timeout`` seconds without
        a byte on either pipe end the wait with ``stalled`` set.
        """
        while True:
            for fd, _ in self._epoll.poll(0):
                if fd == self._pidfd:
                    self._exited = True
                    self._epoll.unregister(fd)  # stays readable: no busy loop after the exit
                elif fd in self._open:
                    self._read(fd)
            if self._exited if until_exit else not self._open:
                return  # a leader that closed its stdout and stderr may still be running
            if self._pidfd is None and until_exit and self.proc.poll() is not None:
                self._exited = True  # no pidfd (old kernel): the exit is polled
                continue
            budget = self._wait_budget(until_exit)
            if budget <= 0:
                self.stalled = True
                return
            with anyio.move_on_after(budget):
                await anyio.wait_readable(self._epoll.fileno())

    def _wait_budget(self, until_exit: bool) -> float:
        """How long to wait for the epoll set: until the stall deadline, a poll of the
        exit without a pidfd, or for ever; 0 or less when the run has stalled."""
        budget = math.inf
        if self._pidfd is None and until_exit:
            budget = _POLL_S
        if until_exit and self.launch.stall_timeout > 0:
            deadline = self._last_output + self.launch.stall_timeout
            left = deadline - anyio.current_time()
            if left <= 0:
                return 0.0
            budget = min(budget, left)
        return budget

    async def wait(self) -> RawResult:
        """Wait for the end (exit, timeout or stop), kill leftovers, drain, return what happened."""
        timed_out = False
        try:
            timed_out = await self._wait_exit_or_stop()
            if not self._ended_cleanly():
                with anyio.CancelScope(shield=True):
                    # Leftover members could hold the pipes open: end them before draining.
                    await kill_group(self.pid, self.launch.kill_grace, self.proc)
                    with anyio.move_on_after(_DRAIN_AFTER_EXIT_S):
                        await self._pump(until_exit=False)
        finally:
            if self.proc.returncode is None:
                with anyio.CancelScope(shield=True):
                    await kill_group(self.pid, self.launch.kill_grace, self.proc)
                    with anyio.move_on_after(5):
                        while self.proc.poll() is None:
                            await anyio.sleep(_POLL_S)
            self._close()
        return self._result(timed_out)

    async def _wait_exit_or_stop(self) -> bool:
        """True when the timeout fired; returns on exit, timeout, stall or stop."""
        timeout = self.launch.timeout if self.launch.timeout > 0 else math.inf
        self._last_output = anyio.current_time()
        with anyio.CancelScope(deadline=anyio.current_time() + timeout) as self._stop_scope:
            if self.stop_reason is not None:
                self._stop_scope.cancel()
            await self._pump(until_exit=True)
        return self._stop_scope.cancelled_caught and self.stop_reason is None

    def _ended_cleanly(self) -> bool:
        """The usual end, checked without waiting: the leader exited, nothing of its group
        is left, and both pipes are at their end once read."""
        if not _group_gone(self.pid, self.proc) or self.proc.returncode is None:
            return False
        for fd in tuple(self._open):
            self._read(fd)
        return not self._open

    def _close(self) -> None:
        if self.proc.returncode is None:
            self.proc.poll()
        self._epoll.close()
        if self._pidfd is not None:
            os.close(self._pidfd)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.sink.close()
        _KNOWN_CHILDREN.discard(self.pid)

    def _result(self, timed_out: bool) -> RawResult:
        rc = self.proc.returncode
        interrupted = self.stop_reason is not None
        ours = timed_out or interrupted or self.stalled  # batchd sent the signal
        sig = -rc if rc is not None and rc < 0 and not ours else None
        return RawResult(
            exit_code=rc if rc is not None and rc >= 0 else None,
            signal=sig,
            timed_out=timed_out,
            interrupted=interrupted,
            stdout_tail=self.stdout.value(),
            stderr_tail=self.stderr.value(),
            output_bytes=self.stdout.total,
            log_error=self.sink.error,
            stalled=self.stalled and not interrupted,
            codex=self.codex.facts(),
        )
