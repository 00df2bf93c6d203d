"""A local process group run by the daemon itself: spawn, stream output to a log, time out, kill.

Owns the hooks' processes (the daemon waits for them; they need not outlive
it) and ``kill_group``, which the local engine also uses to end the group of
a run it found again after a restart. Runner attempts are not started here:
the keeper holds them (``batchd/keeper.py``). Spawning is without a shell in
a new session, waiting goes through a pidfd, stdout and stderr are drained
(the log keeps head and tail past ``max_log_bytes``; the last bytes of each
stream are kept for classification), and the process group is killed
(SIGTERM, grace, SIGKILL) on timeout, on stop, and when the leader leaves
members behind. It never decides what an outcome means: that is ``classify``.

Cancellation: ``Process.wait`` cleans up under a shield; when it is cancelled
the group is killed and reaped before the cancellation proceeds.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from batchd import groups, procfs
from batchd.classify import RawResult
from batchd.engines import RunRef, SpawnError
from batchd.logsink import CHUNK, STDERR_TAIL, STDOUT_TAIL, LogSink, Tail

_DRAIN_AFTER_EXIT_S = 2.0  # a setsid() grandchild can hold the pipe: stop reading after this
_POLL_S = 0.02

_KNOWN_CHILDREN: set[int] = set()


def reap_orphans() -> int:
    """Reap adopted orphans that have exited (never our own hook children)."""
    return groups.reap_children(_KNOWN_CHILDREN)


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
        groups.signal_group(pgid, sig)
        # SIGCONT so that a stopped member can act on SIGTERM.
        if sig == signal.SIGTERM:
            groups.signal_group(pgid, signal.SIGCONT)
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
    if not groups.group_alive(pgid):
        return True
    reap_orphans()
    return not groups.members_left(pgid)


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
    tail_caps: tuple[int, int] = field(default=(STDOUT_TAIL, STDERR_TAIL))
    what: str = "runner"


def spawn(launch: Launch) -> Process:
    """Start the process in its own session; raise ``SpawnError`` if it cannot start."""
    if not os.path.isdir(launch.cwd):
        raise SpawnError("cwd", f"working directory {launch.cwd} does not exist")
    sink = LogSink(launch.log_path, launch.max_log_bytes)
    try:
        proc = groups.start_in_session(
            launch.argv, launch.env, launch.cwd, subprocess.PIPE, subprocess.PIPE, launch.what
        )
    except groups.NotStarted as e:
        sink.close()
        raise SpawnError("cwd" if e.kind == "cwd" else "runner", e.message) from None
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
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return True
            if not data:
                self._epoll.unregister(fd)
                self._open.discard(fd)
                return False
            tail.add(data)
            self.sink.write(data)

    async def _pump(self, until_exit: bool) -> None:
        """Drain both pipes until the leader exits (``until_exit``) or until both end.

        One epoll set holds the two pipes and the leader's pidfd, and the loop waits
        on that set alone: one coroutine per run instead of a reader task per pipe
        and a waiter for the exit.
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
            if self._pidfd is None and until_exit:  # no pidfd (old kernel): poll the exit
                if self.proc.poll() is not None:
                    self._exited = True
                    continue
                with anyio.move_on_after(_POLL_S):
                    await anyio.wait_readable(self._epoll.fileno())
            else:
                await anyio.wait_readable(self._epoll.fileno())

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
        """True when the timeout fired; returns on exit, timeout or stop."""
        timeout = self.launch.timeout if self.launch.timeout > 0 else math.inf
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
        sig = -rc if rc is not None and rc < 0 and not (timed_out or interrupted) else None
        return RawResult(
            exit_code=rc if rc is not None and rc >= 0 else None,
            signal=sig,
            timed_out=timed_out,
            interrupted=interrupted,
            stdout_tail=self.stdout.value(),
            stderr_tail=self.stderr.value(),
            output_bytes=self.stdout.total,
            log_error=self.sink.error,
        )
