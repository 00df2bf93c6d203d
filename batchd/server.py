"""The control socket (SPEC section 7): framing, peer check, the command table.

Owns the bytes on the wire: line framing with the 1 MiB cap, the stall timeout,
SO_PEERCRED, validation of requests and their arguments (against the shapes of
``shapes``), and writing replies and event lines. The commands themselves are
``commands`` and ``readcommands``: they take the engine and validated args and
return a reply (or yield events); they never touch a socket. Nothing a client sends may affect
the daemon or the queue: every failure ends in an error reply or a closed
connection, and a slow reader is dropped rather than waited for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from operator import methodcaller
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import msgspec

from batchd import commands, readcommands, reportshapes, shapes
from batchd.commands import Control
from batchd.errors import BadArgs, BadState, NotDurable, Refused, UnknownBatch
from batchd.protocol import (
    COMMANDS,
    E_BAD_ARGS,
    E_BAD_REQUEST,
    E_BAD_STATE,
    E_FORBIDDEN,
    E_INTERNAL,
    E_IO,
    E_TOO_LARGE,
    E_UNKNOWN_BATCH,
    E_UNKNOWN_COMMAND,
    MAX_LINE_BYTES,
    STALL_TIMEOUT_S,
    VERSION,
)
from batchd.store import ensure_dir

log = logging.getLogger("batchd.server")

IDLE_TIMEOUT_S = 300.0

# --- requests and the command table --------------------------------------------------


class Request(msgspec.Struct, kw_only=True):
    v: int
    id: int | str | None = None
    cmd: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)

Handler = Callable[[Control, Any], Awaitable[Any]]
Stream = Callable[[Control, Any, dict[str, Any]], AsyncIterator[Any]]

# The core's domain errors (``errors``) as the wire's codes (SPEC 7).
ERROR_CODES: dict[type[Refused], str] = {
    UnknownBatch: E_UNKNOWN_BATCH,
    BadState: E_BAD_STATE,
    BadArgs: E_BAD_ARGS,
    NotDurable: E_IO,
}


def error_code(e: Refused) -> str:
    return ERROR_CODES.get(type(e), E_BAD_STATE)


@dataclass(frozen=True)
class Command:
    args: type  # a TypedDict of batchd.shapes (or reportshapes)
    handler: Handler | None = None
    stream: Stream | None = None
    then: Callable[[Control], None] | None = None  # after the reply is out (restart)


COMMAND_TABLE: dict[str, Command] = {
    "ping": Command(shapes.NoArgs, commands.ping),
    "status": Command(shapes.NoArgs, commands.status),
    "list": Command(shapes.NoArgs, commands.list_),
    "watch": Command(shapes.NoArgs, stream=readcommands.watch),
    "show": Command(shapes.BatchArgs, commands.show),
    "cancel": Command(shapes.BatchArgs, commands.cancel),
    "retry": Command(shapes.BatchArgs, commands.retry),
    "reset-breaker": Command(shapes.BatchArgs, commands.reset_breaker),
    "pause": Command(shapes.PauseArgs, commands.pause),
    "resume": Command(shapes.ResumeArgs, commands.resume),
    "skip": Command(shapes.SkipArgs, commands.skip),
    "logs": Command(shapes.LogsArgs, readcommands.logs, stream=readcommands.follow_logs),
    "consent": Command(shapes.ConsentArgs, commands.consent),
    "prune": Command(shapes.PruneArgs, commands.prune),
    "reload": Command(shapes.NoArgs, commands.reload),
    "limit": Command(shapes.LimitArgs, commands.limit),
    "report": Command(reportshapes.ReportArgs, commands.report),
    "restart": Command(shapes.NoArgs, commands.restart, then=methodcaller("restart")),
}
assert set(COMMAND_TABLE) == set(COMMANDS), "protocol.COMMANDS and the server disagree"


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def convert_args(cmd: str, args: dict[str, Any], kind: type) -> Any:
    """Validate ``args`` against the command's TypedDict; unknown keys are errors too."""
    known = kind.__required_keys__ | kind.__optional_keys__  # type: ignore[attr-defined]
    unknown = sorted(set(args) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise ProtocolError(
            E_BAD_ARGS, f"{cmd}: unknown argument {unknown[0]!r} (allowed: {allowed})"
        )
    try:
        return msgspec.convert(args, kind)
    except msgspec.ValidationError as e:
        raise ProtocolError(E_BAD_ARGS, f"{cmd}: {e}") from None


# --- the wire -------------------------------------------------------------------------


def _line(obj: dict[str, Any]) -> bytes:
    return _encoder.encode(obj) + b"\n"


def error_line(req_id: object, code: str, message: str) -> bytes:
    return _line(
        {"v": VERSION, "id": req_id, "ok": False, "error": {"code": code, "message": message}}
    )


class Connection:
    def __init__(self, stream: anyio.abc.SocketStream, engine: Control) -> None:
        self.stream = stream
        self.engine = engine
        self.buf = bytearray()

    async def send(self, data: bytes) -> None:
        """Send, or give up on a client that has not read for STALL_TIMEOUT_S."""
        with anyio.fail_after(STALL_TIMEOUT_S):
            await self.stream.send(data)

    async def read_line(self) -> bytes | None:
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                if len(line) > MAX_LINE_BYTES:
                    raise ProtocolError(E_TOO_LARGE, f"a line is limited to {MAX_LINE_BYTES} bytes")
                return line
            if len(self.buf) > MAX_LINE_BYTES:
                raise ProtocolError(E_TOO_LARGE, f"a line is limited to {MAX_LINE_BYTES} bytes")
            timeout = STALL_TIMEOUT_S if self.buf else IDLE_TIMEOUT_S
            try:
                with anyio.fail_after(timeout):
                    chunk = await self.stream.receive(65536)
            except TimeoutError:
                if self.buf:
                    raise ProtocolError(
                        E_BAD_REQUEST, f"incomplete line: nothing received for {timeout:g}s"
                    ) from None
                return None
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                return None
            self.buf += chunk

    async def serve(self) -> None:
        while True:
            try:
                line = await self.read_line()
            except ProtocolError as e:
                with contextlib.suppress(Exception):
                    await self.send(error_line(None, e.code, e.message))
                return
            if line is None:
                return
            if not line.strip():
                continue
            if not await self.answer(line):
                return

    async def answer(self, line: bytes) -> bool:
        """Handle one request line; False when the connection should end."""
        try:
            req = _request_decoder.decode(line)
        except msgspec.DecodeError as e:
            await self.send(error_line(None, E_BAD_REQUEST, f"not a valid request: {e}"))
            return True
        if req.v != VERSION:
            msg = f"protocol version {req.v} is not supported (this daemon speaks {VERSION})"
            await self.send(error_line(req.id, E_BAD_REQUEST, msg))
            return True
        command = COMMAND_TABLE.get(req.cmd)
        if command is None:
            known = ", ".join(COMMANDS)
            msg = f"unknown command {req.cmd!r}; known: {known}"
            await self.send(error_line(req.id, E_UNKNOWN_COMMAND, msg))
            return True
        try:
            args = convert_args(req.cmd, req.args, command.args)
        except ProtocolError as e:
            await self.send(error_line(req.id, e.code, e.message))
            return True
        follow = args.get("follow", False)
        if command.stream is not None and (command.handler is None or follow):
            final: dict[str, Any] = {}
            await self.stream_events(req.id, command.stream(self.engine, args, final), final)
            return False
        assert command.handler is not None
        try:
            result = await command.handler(self.engine, args)
        except Refused as e:
            await self.send(error_line(req.id, error_code(e), e.message))
            return True
        except Exception as e:
            log.exception("control: %s failed", req.cmd)
            await self.send(error_line(req.id, E_INTERNAL, f"{req.cmd} failed: {e}"))
            return True
        try:
            await self.send(_line({"v": VERSION, "id": req.id, "ok": True, "result": result}))
        finally:
            if command.then is not None:
                command.then(self.engine)  # the client may be gone: it asked all the same
        return True

    async def stream_events(
        self, req_id: object, events: AsyncIterator[Any], final: dict[str, Any]
    ) -> None:
        """Send event lines until the source ends or the client goes away."""
        async with anyio.create_task_group() as tg:

            async def until_closed() -> None:
                with contextlib.suppress(Exception):
                    while await self.stream.receive(65536):
                        pass
                tg.cancel_scope.cancel()

            tg.start_soon(until_closed)
            try:
                async for event in events:
                    await self.send(_line({"v": VERSION, "id": req_id, "event": event}))
                await self.send(_line({"v": VERSION, "id": req_id, "ok": True, "result": final}))
            except Refused as e:
                await self.send(error_line(req_id, error_code(e), e.message))
            tg.cancel_scope.cancel()


def peer_uid(stream: anyio.abc.SocketStream) -> int | None:
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    try:
        creds = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def handle_client(stream: anyio.abc.SocketStream, engine: Control) -> None:
    async with stream:
        try:
            uid = peer_uid(stream)
            if uid is None or uid not in (os.getuid(), 0):
                log.warning("control: refused a client of uid %s", uid)
                with anyio.move_on_after(1):
                    msg = f"uid {uid} may not use this daemon (it serves uid {os.getuid()})"
                    await stream.send(error_line(None, E_FORBIDDEN, msg))
                    # Half-close and drain briefly, so that closing cannot reset the
                    # connection before the client has read why.
                    await stream.send_eof()
                    with contextlib.suppress(anyio.EndOfStream):
                        while await stream.receive(4096):
                            pass
                return
            await Connection(stream, engine).serve()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
            return
        except Exception:
            log.exception("control: a connection failed")


# --- the listening socket ----------------------------------------------------------------


class SocketInUse(Exception):
    pass


def bind_socket(path: Path) -> socket.socket:
    """Bind ``path`` (mode 0600 inside a 0700 directory); replace a stale socket file."""
    ensure_dir(path.parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SocketInUse(f"{path} exists and is not a socket; remove it or choose --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: left by a daemon that died
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise SocketInUse(f"{path}: {e.strerror}") from None
            os.unlink(path)
        else:
            raise SocketInUse(
                f"another daemon is answering on {path}; stop it first, or choose --socket"
            )
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    return sock


async def serve(listener: anyio.abc.SocketListener, engine: Control) -> None:
    async with listener:
        await listener.serve(lambda stream: handle_client(stream, engine))
