"""One local run inside the keeper: start it, pump its output, time it, end its group.

A ``KeptRun`` is driven by the keeper's single loop (``batchd/keeper.py``):
the loop tells it when a pipe is readable (``on_fd``), when the leader has
been reaped (``exited``) and when the daemon asks it to stop (``stop``); it
asks for its next deadline (``due``) and calls ``tick`` at that time. It never
blocks and never sleeps. Its life, as the daemon's own runs had it before
(SPEC 5), and now whether a daemon is there or not:

- running: output goes to the attempt log (capped, ``LogSink``) and to the
  tails; ``runner.timeout`` counts from the start, ``runner.stall_timeout``
  from the last output; either, or a stop, sends the group SIGTERM (and
  SIGCONT), then SIGKILL after ``kill_grace``;
- the leader has exited: whatever it left in its group is ended the same way
  before the pipes are drained (a member holding a pipe would hang the
  drain); the drain then waits at most ``DRAIN_AFTER_EXIT_S`` (a grandchild
  that called ``setsid()`` left the group and may hold a pipe);
- finished: ``result`` says how it ended.

A leaf over the standard library and batchd's process helpers: the keeper
must start fast. It never decides what an outcome means.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchd import groups, procfs
from batchd.agents import CodexStream
from batchd.logsink import CHUNK, STDERR_TAIL, STDOUT_TAIL, LogSink, Tail
from batchd.runfile import Ended

DRAIN_AFTER_EXIT_S = 2.0
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for members before giving up on them
GROUP_POLL_S = 0.02  # how often a group that is being ended is looked at


@dataclass(frozen=True, kw_only=True)
class Order:
    """What the daemon asks the keeper to run (its ``start`` message)."""

    run_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    log_path: Path
    run_file: Path
    timeout: float = 0.0  # seconds from the start; 0 = none
    stall_timeout: float = 0.0  # seconds without output; 0 = none
    kill_grace: float = 10.0
    max_log_bytes: int = 10 * 1024 * 1024

    @classmethod
    def of(cls, msg: dict[str, Any]) -> Order:
        """From a ``start`` message; ``KeyError``/``ValueError``/``TypeError`` if malformed."""
        return cls(
            run_id=str(msg["run"]),
            argv=[str(a) for a in msg["argv"]],
            env={str(k): str(v) for k, v in msg["env"].items()},
            cwd=str(msg["cwd"]),
            log_path=Path(msg["log"]),
            run_file=Path(msg["run_file"]),
            timeout=float(msg.get("timeout", 0.0)),
            stall_timeout=float(msg.get("stall_timeout", 0.0)),
            kill_grace=float(msg.get("kill_grace", 10.0)),
            max_log_bytes=int(msg.get("max_log_bytes", 10 * 1024 * 1024)),
        )


class StartError(Exception):
    """The run could not start: ``kind`` is ``cwd``, ``runner`` or ``log`` (SPEC 5)."""

    def __init__(self, kind: str, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.errno = errno


def _spawn(order: Order) -> tuple[int, LogSink, int, int]:
    """Start the runner in its own session; its stdout's and stderr's read ends (ours)."""
    if not os.path.isdir(order.cwd):
        raise StartError("cwd", f"working directory {order.cwd} does not exist")
    try:
        sink = LogSink(order.log_path, order.max_log_bytes)
    except OSError as e:
        raise StartError("log", e.strerror or str(e), e.errno) from None
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = groups.spawn_in_session(order.argv, order.env, order.cwd, out_w, err_w)
    except groups.NotStarted as e:
        sink.close()
        for fd in (out_r, err_r):
            os.close(fd)
        raise StartError(e.kind, e.message) from None
    finally:
        os.close(out_w)
        os.close(err_w)
    return pid, sink, out_r, err_r


class KeptRun:
    """One started run; see the module docstring for its life."""

    def __init__(self, order: Order, poller: select.epoll, now: float) -> None:
        """Start it (``StartError`` when it cannot start); its fds join ``poller``."""
        self.order = order
        before = procfs.boottime_ns()
        self.pid, self.sink, out, err = _spawn(order)
        self.start_time = procfs.start_time_of_child(self.pid, before, procfs.boottime_ns())
        self._poller = poller
        self.stdout, self.stderr = Tail(STDOUT_TAIL), Tail(STDERR_TAIL)
        self._pipes = {out: self.stdout, err: self.stderr}
        self._stdout_fd = out
        # codex's facts (thread, turns, tokens) lie far before the tail of a long run: read
        # them from all of stdout as it streams.
        self.codex = CodexStream()
        for fd in self._pipes:
            os.set_blocking(fd, False)
            poller.register(fd, select.EPOLLIN)
        try:
            self.pidfd: int | None = os.pidfd_open(self.pid)
        except OSError:
            self.pidfd = None  # an old kernel: the keeper polls for the exit instead
        else:
            poller.register(self.pidfd, select.EPOLLIN)
        self.started = self.last_output = now
        self.reason: str | None = None  # timed_out, stalled, stopped: why batchd ended it
        self.status: int | None = None  # the leader's wait status, once reaped
        self._kill_at: float | None = None  # SIGTERM sent; SIGKILL due then
        self._give_up_at: float | None = None  # SIGKILL sent; members ignored after then
        self._drain_until: float | None = None
        self.finished = False

    @property
    def fds(self) -> list[int]:
        """The fds this run has in the poller now."""
        return [*self._pipes, *([self.pidfd] if self.pidfd is not None else [])]

    # --- events -------------------------------------------------------------------------

    def on_fd(self, fd: int) -> None:
        """``fd`` (a pipe, or the leader's pidfd) is ready."""
        if fd == self.pidfd:
            self._poller.unregister(fd)  # stays readable: the reaping tells the rest
            os.close(fd)
            self.pidfd = None
        elif fd in self._pipes:
            self._read(fd)

    def _read(self, fd: int) -> None:
        tail = self._pipes[fd]
        while True:
            try:
                data = os.read(fd, CHUNK)
            except BlockingIOError:
                return
            if not data:
                self._poller.unregister(fd)
                del self._pipes[fd]
                os.close(fd)
                return
            tail.add(data)
            self.sink.write(data)
            if fd == self._stdout_fd:
                self.codex.feed(data)
            self.last_output = time.monotonic()

    def exited(self, status: int) -> None:
        """The leader was reaped with wait status ``status``."""
        self.status = status

    def stop(self, reason: str, now: float) -> None:
        """End the run now (the first reason counts): SIGTERM the group, SIGKILL later."""
        if self.reason is None:
            self.reason = reason
        if self._kill_at is None and not self.finished:
            self._terminate(now)

    # --- time ---------------------------------------------------------------------------

    def due(self, now: float) -> float | None:
        """When ``tick`` has something to do (monotonic), or None."""
        if self.finished:
            return None
        if self._drain_until is not None:
            return self._drain_until
        if self.status is not None:
            return now + GROUP_POLL_S  # members left by the leader are looked at until gone
        if self._give_up_at is not None or self._kill_at is not None:
            return self._give_up_at or self._kill_at
        times = []
        if self.order.timeout > 0:
            times.append(self.started + self.order.timeout)
        if self.order.stall_timeout > 0:
            times.append(self.last_output + self.order.stall_timeout)
        return min(times, default=None)

    def tick(self, now: float) -> None:
        """Act on what is due at ``now``: a time limit, SIGKILL, the end of the group."""
        if self.finished:
            return
        if self.status is None:
            self._tick_running(now)
        else:
            self._tick_exited(now)

    def _tick_running(self, now: float) -> None:
        o = self.order
        if self._kill_at is None:
            if o.timeout > 0 and now >= self.started + o.timeout:
                self.stop("timed_out", now)
            elif o.stall_timeout > 0 and now >= self.last_output + o.stall_timeout:
                self.stop("stalled", now)
        elif self._give_up_at is None:
            if now >= self._kill_at:
                self._kill(now)
        elif now >= self._give_up_at:
            self._finish()  # a leader that SIGKILL does not end (stuck in the kernel)

    def _tick_exited(self, now: float) -> None:
        """The leader is gone: end what it left, drain the pipes, finish."""
        if self._drain_until is None:
            for fd in list(self._pipes):
                self._read(fd)
            if groups.members_left(self.pid) and not self._gave_up(now):
                if self._kill_at is None:
                    self._terminate(now)
                elif self._give_up_at is None and now >= self._kill_at:
                    self._kill(now)
                return
            if not self._pipes:
                self._finish()
                return
            self._drain_until = now + DRAIN_AFTER_EXIT_S
        for fd in list(self._pipes):
            self._read(fd)
        if not self._pipes or now >= self._drain_until:
            self._finish()

    def _gave_up(self, now: float) -> bool:
        return self._give_up_at is not None and now >= self._give_up_at

    def _terminate(self, now: float) -> None:
        groups.signal_group(self.pid, signal.SIGTERM)
        groups.signal_group(self.pid, signal.SIGCONT)  # a stopped member can act on SIGTERM
        self._kill_at = now + self.order.kill_grace

    def _kill(self, now: float) -> None:
        groups.signal_group(self.pid, signal.SIGKILL)
        self._give_up_at = now + KILL_WAIT_S

    # --- the end ------------------------------------------------------------------------

    def _finish(self) -> None:
        for fd in self.fds:
            self._poller.unregister(fd)
            os.close(fd)
        self._pipes.clear()
        self.pidfd = None
        self.sink.close()
        self.finished = True

    def result(self) -> Ended:
        """How the run ended (once ``finished``)."""
        rc = os.waitstatus_to_exitcode(self.status) if self.status is not None else None
        killed = rc is not None and rc < 0
        return Ended(
            exit_code=rc if rc is not None and rc >= 0 else None,
            signal=-rc if rc is not None and killed and self.reason is None else None,
            timed_out=self.reason == "timed_out",
            stalled=self.reason == "stalled",
            stopped=self.reason == "stopped",
            output_bytes=self.stdout.total,
            log_error=self.sink.error,
            stdout_tail=self.stdout.value(),
            stderr_tail=self.stderr.value(),
            codex=_codex(self.codex),
        )


def _codex(stream: CodexStream) -> dict[str, Any] | None:
    facts = stream.facts()
    return dataclasses.asdict(facts) if facts.seen else None
