"""The daemon's end of one keeper (``batchd/keeper.py``): start it, send it requests, hear it.

One ``KeeperLink`` is one keeper process and the socket pair to it. ``start``
sends an order and waits for ``started`` or ``failed``; ``ended`` waits for a
run's end; ``stop`` asks for one. Replies and ends are read by whichever
waiter finds no read in progress (the others wait for its round), so no task
of its own is needed and nothing ever blocks the event loop.

A keeper that goes away while the daemon runs (killed, crashed) makes the
link ``lost``: waits return at once (``start`` raises ``KeeperGone``,
``ended`` returns None) and the local engine starts another keeper for what
comes next.

Cancellation: every wait may be cancelled; that only stops the waiting. What
the keeper runs goes on, which is the point.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec

import batchd
from batchd import runfile
from batchd.keeper import NAME

log = logging.getLogger("batchd")

# The keeper's command line: an isolated interpreter without site (it starts in tens of
# milliseconds) that imports batchd from where this daemon runs it.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[3]); import batchd.keeper as k; "
    "k.main(int(sys.argv[2]), sys.argv[4])"
)
_RECV = 1 << 20
_EXIT_WAIT_S = 2.0  # at the daemon's stop: how long to wait for a keeper with nothing to hold
_STUCK_POLL_S = 0.02  # a request that did not fit in the socket is retried this often
_DELTA_MAX = 32  # keys an order may change before the keeper gets a new base environment


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


class KeeperGone(Exception):
    """The keeper went away before it answered."""


class KeeperLink:
    def __init__(self, env: Mapping[str, str], lock: Path | None = None) -> None:
        """Start a keeper now (``lock``: the state dir's ``keepers.lock``, which it holds
        shared while it serves this daemon); ``OSError`` when it cannot be started."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = str(Path(batchd.__file__).resolve().parent.parent)
        fd = str(theirs.fileno())
        argv = [sys.executable, "-I", "-S", "-c", _BOOT, NAME, fd, root, str(lock or "")]
        try:
            theirs.set_inheritable(True)
            self.pid = os.posix_spawn(
                sys.executable,
                argv,
                dict(env),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                ],
                setsid=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self.lost = False
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        self._replies: dict[str, dict[str, Any]] = {}  # started / failed, by run id
        self._ended: dict[str, dict[str, Any]] = {}
        self._open: set[str] = set()  # runs started and not yet heard to end
        self._base_env: dict[str, str] | None = None  # what env_delta is relative to
        self._reading = False
        self._changed = anyio.Event()
        log.debug("keeper of local runs started (pid %d)", self.pid)

    @property
    def holds_runs(self) -> bool:
        return bool(self._open)

    async def start(self, order: dict[str, Any]) -> dict[str, Any]:
        """Send a ``start`` order; its ``started`` or ``failed`` reply (``KeeperGone``)."""
        run_id = str(order["run"])
        env = order.pop("env")
        self._send({"op": "start", **order, "env_delta": self._env_delta(env)})
        await self._until(lambda: run_id in self._replies)
        reply = self._replies.pop(run_id, None)
        if reply is None:
            raise KeeperGone(f"the keeper of local runs (pid {self.pid}) exited")
        if reply.get("op") == "started":
            self._open.add(run_id)
        return reply

    async def ended(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``ended`` message; None when the keeper went away before it."""
        await self._until(lambda: run_id in self._ended)
        self._open.discard(run_id)
        return self._ended.pop(run_id, None)

    def _env_delta(self, env: dict[str, str]) -> dict[str, str]:
        """What ``env`` adds to the environment the keeper was last given (``base``): the
        same for every run but its ``BATCHD_*`` values, so an order carries a few keys."""
        base = self._base_env
        if base is None or any(k not in env for k in base):
            base = {k: v for k, v in env.items() if not k.startswith("BATCHD_")}
        delta = {k: v for k, v in env.items() if base.get(k) != v}
        if base is not self._base_env and not self.lost:
            self._base_env = base
            self._send({"op": "base", "run": "", "env": base})
        elif len(delta) > _DELTA_MAX:  # another runner profile's env: a new base
            self._base_env = None
            return self._env_delta(env)
        return delta

    def stop(self, run_id: str) -> None:
        """Ask the keeper to stop the run (its ``ended`` follows)."""
        if not self.lost:
            self._send({"op": "stop", "run": run_id})

    def recorded(self, run_id: str) -> None:
        """The run's end is durable in the state: the keeper need not keep it any more."""
        if not self.lost:
            self._send({"op": "recorded", "run": run_id})

    async def aclose(self) -> None:
        """Close the socket: the keeper goes on with its runs, or exits if it has none
        (then it is waited for, briefly, and reaped)."""
        idle = not self._open
        if not self.lost:
            self._close()
        if idle:
            with anyio.move_on_after(_EXIT_WAIT_S, shield=True):
                while not exited_child(self.pid):
                    await anyio.sleep(_STUCK_POLL_S)
        self._wake()

    # --- the socket ----------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        if self.lost:
            return
        self._outbuf += _encode(msg) + b"\n"
        self._flush()

    def _flush(self) -> None:
        try:
            while self._outbuf:
                del self._outbuf[: self._sock.send(self._outbuf)]
            os.sched_yield()  # the keeper acts on it at once (it was woken on this CPU)
        except BlockingIOError:
            return
        except OSError:
            self._lose()

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done() and not self.lost:
            await self._round()

    async def _round(self) -> None:
        """Read what the keeper sent, or wait for the round of whoever reads now."""
        if self._reading:
            await self._changed.wait()
            return
        self._reading = True
        try:
            if self._outbuf:
                self._flush()
            if self._outbuf:  # the keeper reads slowly: look again soon
                with anyio.move_on_after(_STUCK_POLL_S):
                    await anyio.wait_readable(self._sock)
            else:
                await anyio.wait_readable(self._sock)
            self._read()
        except anyio.ClosedResourceError:
            pass  # closed under us (the keeper went away): ``lost`` says so
        finally:
            self._reading = False
            self._wake()

    def _read(self) -> None:
        while not self.lost:
            try:
                data = self._sock.recv(_RECV)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lose()
                return
            self._inbuf += data
            for line in runfile.take_lines(self._inbuf):
                self._dispatch(line)

    def _dispatch(self, line: bytes) -> None:
        try:
            msg = _decode(line)
            op, run_id = msg["op"], str(msg["run"])
        except (msgspec.DecodeError, KeyError, TypeError):
            log.error("keeper of local runs: a malformed line: %r", line[:200])
            return
        if op == "ended":
            self._ended[run_id] = msg
        elif op in ("started", "failed"):
            self._replies[run_id] = msg

    def _lose(self) -> None:
        if self.lost:
            return
        self._close()
        exited_child(self.pid)
        if self._open:
            log.warning(
                "the keeper of local runs (pid %d) exited with %d runs open",
                self.pid,
                len(self._open),
            )
        self._wake()

    def _close(self) -> None:
        self.lost = True
        anyio.notify_closing(self._sock)  # a waiter on it wakes up instead of hanging
        self._sock.close()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


def exited_child(pid: int) -> bool:
    """Reap ``pid`` if it is an exited child of ours; True when it is gone (or not ours)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid
