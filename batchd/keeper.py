"""The keeper: a small process that holds the local runs, so that they outlive the daemon.

The daemon starts one keeper (``batchd-keeper`` in ``ps``) the first time it
runs something locally, and talks to it over a socket pair: ``start`` (an
``Order``) and ``stop`` go in; ``started`` (the runner's pid and start time),
``failed`` (why it could not start) and ``ended`` (how it ended) come out, one
JSON object per line. The keeper is the runners' parent: it holds their
pipes, writes the attempt logs with their caps, keeps the tails, enforces
``runner.timeout`` and ``runner.stall_timeout`` counted from each run's start,
and ends each run's process group.

What the daemon has not made durable yet is kept here, and written to the
run file next to the attempt log (``runfile``) as soon as the daemon goes
away (kill -9, a crash, ``batchctl restart``, a stop that leaves the
runners): the socket reaches its end, and the keeper records who holds each
run still going and how each run the daemon did not acknowledge (``recorded``)
ended. After that it records each end itself, and exits once its last run
has ended. So a daemon that is there costs no file write per run. While it
serves a daemon, the keeper holds a shared lock on the state dir's
``keepers.lock``; it lets go only once its run files are written, and a
starting daemon takes that lock exclusively before it looks for runs: it
never looks before the files are there. SIGTERM to the keeper stops every run
(recorded ``stopped``) and ends it.

It runs in its own session (no terminal signal reaches it), is a child
subreaper (what a runner orphans comes back to it and is reaped), and imports
only the standard library and batchd's leaves: it starts in a few tens of
milliseconds and stays small. It never decides what an outcome means.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import sys
import time
from typing import Any

from batchd import groups, procfs, runfile
from batchd.keptrun import KeptRun, Order, StartError

NAME = "batchd-keeper"  # its name in ps; also an argument of its command line
_RECV = 1 << 16


class Keeper:
    def __init__(self, sock: socket.socket, signals: int, lock: int | None = None) -> None:
        self.poller = select.epoll()
        self.sock: socket.socket | None = sock
        self.signals = signals
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.runs: dict[str, KeptRun] = {}
        self.by_fd: dict[int, KeptRun] = {}
        self.by_pid: dict[int, KeptRun] = {}
        self.unacked: dict[str, tuple[KeptRun, runfile.Ended]] = {}  # told, not yet durable
        self.lock = lock  # keepers.lock, shared, until the run files are written
        self.ending = False  # SIGTERM: every run stops, nothing new starts
        self.base_env: dict[str, str] = {}  # an order's env_delta applies to this
        self.held = runfile.Held(os.getpid(), procfs.start_time(os.getpid()))
        sock.setblocking(False)
        self.poller.register(sock, select.EPOLLIN)
        self.poller.register(signals, select.EPOLLIN)

    def serve(self) -> None:
        """Until the daemon has gone (or SIGTERM came) and no run is left."""
        while (self.sock is not None and not self.ending) or self.runs:
            for fd, events in self.poller.poll(self._timeout()):
                self._event(fd, events)
            self._reap()
            now = time.monotonic()
            for run in list(self.runs.values()):
                run.tick(now)
                if run.finished:
                    self._finish(run)
        self._drop_daemon()

    def _timeout(self) -> float:
        now = time.monotonic()
        dues = [d for run in self.runs.values() if (d := run.due(now)) is not None]
        if any(run.pidfd is None and run.status is None for run in self.runs.values()):
            dues.append(now + 0.02)  # no pidfd (an old kernel): look for exits this often
        return max(0.0, min(dues) - now) if dues else -1

    def _event(self, fd: int, events: int) -> None:
        if self.sock is not None and fd == self.sock.fileno():
            if events & select.EPOLLOUT:
                self._flush()
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self._receive()
        elif fd == self.signals:
            self._on_signals()
        elif fd in self.by_fd:
            self.by_fd[fd].on_fd(fd)

    def _on_signals(self) -> None:
        try:
            got = os.read(self.signals, 64)
        except BlockingIOError:
            return
        if signal.SIGTERM in got and not self.ending:
            self.ending = True
            now = time.monotonic()
            for run in self.runs.values():
                run.stop("stopped", now)

    def _reap(self) -> None:
        """Reap every exited child: a runner's status goes to its run; an orphan is dropped."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.pop(pid, None)
            if run is not None:
                run.exited(status)

    # --- the daemon's requests ------------------------------------------------------------

    def _receive(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(_RECV)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_daemon()
            return
        self.inbuf += data
        for line in runfile.take_lines(self.inbuf):
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            op, run_id = msg["op"], str(msg["run"])
        except (ValueError, KeyError, TypeError):
            print(f"{NAME}: ignored a malformed request: {line[:200]!r}", file=sys.stderr)
            return
        if op == "start":
            self._start(run_id, msg)
        elif op == "stop" and run_id in self.runs:
            self.runs[run_id].stop("stopped", time.monotonic())
        elif op == "base" and isinstance(msg.get("env"), dict):
            self.base_env = {str(k): str(v) for k, v in msg["env"].items()}
        elif op == "recorded":
            self.unacked.pop(run_id, None)

    def _start(self, run_id: str, msg: dict[str, Any]) -> None:
        try:
            if self.ending:
                raise StartError("runner", "the keeper of local runs is stopping (SIGTERM)")
            try:
                order = Order.of({**msg, "env": {**self.base_env, **msg["env_delta"]}})
            except (KeyError, ValueError, TypeError, AttributeError) as e:
                raise StartError("runner", f"malformed start request: {e!r}") from None
            run = KeptRun(order, self.poller, time.monotonic())
        except StartError as e:
            reply = {"op": "failed", "run": run_id, "kind": e.kind, "message": e.message}
            self._send({**reply, "errno": e.errno})
            return
        self.runs[run_id] = run
        self.by_pid[run.pid] = run
        for fd in run.fds:
            self.by_fd[fd] = run
        self._send({"op": "started", "run": run_id, "pid": run.pid, "start": run.start_time})

    def _finish(self, run: KeptRun) -> None:
        """The run has ended: tell the daemon, and keep the end until it says it is durable;
        with no daemon there, record it in the run file."""
        run_id = run.order.run_id
        del self.runs[run_id]
        self.by_pid.pop(run.pid, None)
        for fd in [fd for fd, r in self.by_fd.items() if r is run]:
            del self.by_fd[fd]
        ended = run.result()
        if self.sock is None:
            self._record(run, ended)
            return
        self.unacked[run_id] = (run, ended)
        self._send({"op": "ended", "run": run_id, "record": runfile.to_dict(ended)})

    def _record(self, run: KeptRun, record: runfile.Held | runfile.Ended) -> None:
        try:
            runfile.write(run.order.run_file, record)
        except OSError as e:
            # A full disk: the daemon that is there hears of the run anyway; a daemon
            # started later finds no record, and the attempt runs again.
            print(f"{NAME}: cannot write {run.order.run_file}: {e}", file=sys.stderr)

    # --- the daemon's end of the socket -----------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        if self.sock is None:
            return
        self.outbuf += json.dumps(msg, separators=(",", ":")).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        assert self.sock is not None
        try:
            while self.outbuf:
                del self.outbuf[: self.sock.send(self.outbuf)]
            # The daemon waits for what was just sent, and the kernel tends to wake it on
            # this CPU: let it run now rather than after our own bookkeeping (run files).
            os.sched_yield()
        except BlockingIOError:
            pass
        except OSError:
            self._drop_daemon()  # the daemon has gone: the runs go on without it
            return
        events = select.EPOLLIN | (select.EPOLLOUT if self.outbuf else 0)
        self.poller.modify(self.sock, events)

    def _drop_daemon(self) -> None:
        """The daemon has gone: record what only this keeper knows, then let the next
        daemon look (``keepers.lock``)."""
        if self.sock is None:
            return
        self.poller.unregister(self.sock)
        self.sock.close()
        self.sock = None
        self.outbuf.clear()
        for run in self.runs.values():
            self._record(run, self.held)
        for run, ended in self.unacked.values():
            self._record(run, ended)
        self.unacked.clear()
        if self.lock is not None:
            os.close(self.lock)  # the shared lock goes with it
            self.lock = None


def shared_lock(path: str) -> int | None:
    """A shared flock on ``path`` (created 0600, never through a link); None without one."""
    if not path:
        return None
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as e:
        print(f"{NAME}: cannot lock {path}: {e}", file=sys.stderr)
        return None
    return fd


def main(fd: int, lock_path: str = "") -> None:
    """The keeper's process: ``fd`` is its end of the socket pair with the daemon;
    ``lock_path`` the state dir's ``keepers.lock`` (none: "")."""
    groups.set_name(NAME)
    groups.become_subreaper()
    lock = shared_lock(lock_path)
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    os.set_inheritable(fd, False)  # runners start by posix_spawn: they inherit what is not
    Keeper(socket.socket(fileno=fd), read_end, lock).serve()
