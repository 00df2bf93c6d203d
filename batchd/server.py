"""The control socket (SPEC section 7): framing, peer check, one handler per command.

Owns the bytes on the wire: line framing with the 1 MiB cap, the stall timeout,
SO_PEERCRED, msgspec validation of requests and their arguments, and writing
replies and event lines. Handlers below take the engine and validated args and
return a result (or yield events); they never touch a socket. Nothing a client
sends may affect the daemon or the queue: every failure ends in an error reply
or a closed connection, and a slow reader is dropped rather than waited for.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import anyio.abc
import msgspec

from batchd.batch import BatchError
from batchd.engine import Engine
from batchd.protocol import (
    COMMANDS,
    E_BAD_ARGS,
    E_BAD_REQUEST,
    E_FORBIDDEN,
    E_INTERNAL,
    E_TOO_LARGE,
    E_UNKNOWN_COMMAND,
    MAX_LINE_BYTES,
    STALL_TIMEOUT_S,
    VERSION,
    is_batch_id,
)
from batchd.store import ensure_dir

log = logging.getLogger("batchd.server")

IDLE_TIMEOUT_S = 300.0
WATCH_INTERVAL_S = 0.1
FOLLOW_POLL_S = 0.25
LOG_TEXT_MAX = 512 * 1024

# --- messages --------------------------------------------------------------------


class Request(msgspec.Struct, kw_only=True):
    v: int
    id: int | str | None = None
    cmd: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)


class Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NoArgs(Args):
    pass


class BatchArgs(Args):
    batch_id: str


class PauseArgs(Args):
    batch_id: str | None = None
    now: bool = False


class ResumeArgs(Args):
    batch_id: str | None = None
    all: bool = False


class SkipArgs(Args):
    batch_id: str
    index: Annotated[int, msgspec.Meta(ge=0)]


class LogsArgs(Args):
    batch_id: str
    index: Annotated[int, msgspec.Meta(ge=0)] | None = None
    follow: bool = False


class ConsentArgs(Args):
    enabled: bool


class PruneArgs(Args):
    older_than_days: Annotated[int, msgspec.Meta(ge=0)] = 30


_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(Request)


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_id(batch_id: str | None) -> None:
    if batch_id is not None and not is_batch_id(batch_id):
        raise BatchError(
            "unknown_batch",
            f"{batch_id!r} is not a batch id (batch-YYYYMMDD-HHMMSS-ffffff); 'batchctl list'",
        )


# --- handlers: engine + args -> result; no socket IO -----------------------------------

Result = dict[str, Any]
Events = AsyncIterator[dict[str, Any]]


async def h_ping(engine: Engine, _: NoArgs) -> Result:
    from batchd import __version__

    engine.poke_spool()  # 'batchctl submit' pings after writing: pick the request up now
    return {"pong": True, "pid": os.getpid(), "version": __version__}


async def h_status(engine: Engine, _: NoArgs) -> Result:
    return engine.status()


async def h_list(engine: Engine, _: NoArgs) -> Result:
    return engine.list_batches()


async def h_show(engine: Engine, a: BatchArgs) -> Result:
    _check_id(a.batch_id)
    return engine.show(a.batch_id)


async def h_cancel(engine: Engine, a: BatchArgs) -> Result:
    _check_id(a.batch_id)
    return await engine.cancel(a.batch_id)


async def h_retry(engine: Engine, a: BatchArgs) -> Result:
    _check_id(a.batch_id)
    return engine.retry(a.batch_id)


async def h_reset_breaker(engine: Engine, a: BatchArgs) -> Result:
    _check_id(a.batch_id)
    return engine.reset_breaker(a.batch_id)


async def h_pause(engine: Engine, a: PauseArgs) -> Result:
    _check_id(a.batch_id)
    return await engine.pause(a.batch_id, a.now)


async def h_resume(engine: Engine, a: ResumeArgs) -> Result:
    if a.batch_id is None and not a.all:
        raise BatchError(E_BAD_ARGS, "resume needs a batch_id or all=true")
    _check_id(a.batch_id)
    return engine.resume(a.batch_id, a.all)


async def h_skip(engine: Engine, a: SkipArgs) -> Result:
    _check_id(a.batch_id)
    return await engine.skip(a.batch_id, a.index)


async def h_consent(engine: Engine, a: ConsentArgs) -> Result:
    return engine.set_consent(a.enabled)


async def h_prune(engine: Engine, a: PruneArgs) -> Result:
    return engine.prune(a.older_than_days)


def _read_tail(path: Path, limit: int) -> tuple[str, bool, int]:
    """The last ``limit`` bytes of a log (text, truncated?, size)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "", False, 0
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace"), start > 0, size


async def h_logs(engine: Engine, a: LogsArgs) -> Result:
    _check_id(a.batch_id)
    index, attempt, path = engine.log_target(a.batch_id, a.index)
    text, truncated, _ = _read_tail(path, LOG_TEXT_MAX)
    return {
        "batch_id": a.batch_id,
        "index": index,
        "attempt": attempt,
        "path": str(path),
        "text": text,
        "truncated": truncated,
    }


async def s_watch(engine: Engine, _: NoArgs, final: dict[str, Any]) -> Events:
    seen = -1
    while True:
        changed = engine.changed
        if engine.version == seen:
            await changed.wait()
        seen = engine.version
        yield {"type": "status", "status": engine.status()}
        await anyio.sleep(WATCH_INTERVAL_S)


async def s_logs(engine: Engine, a: LogsArgs, final: dict[str, Any]) -> Events:
    _check_id(a.batch_id)
    index, attempt, path = engine.log_target(a.batch_id, a.index)
    batch = engine.get(a.batch_id)
    pos = 0
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        chunk = _read_from(path, pos)
        if chunk:
            pos += len(chunk)
            yield {"type": "log", "index": index, "attempt": attempt, "text": decoder.decode(chunk)}
            continue
        latest = batch.last_attempt.get(index)
        if latest is not None and latest[0] != attempt:
            attempt = latest[0]
            path = engine.store.log_path(a.batch_id, index, attempt)
            pos = 0
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            yield {"type": "attempt", "index": index, "attempt": attempt}
            continue
        running = engine.current is not None and engine.current.batch is batch
        if (index in batch.settled or batch.finished) and not (
            running and engine.current is not None and engine.current.index == index
        ):
            final.update({"batch_id": a.batch_id, "index": index, "ended": True})
            return
        with anyio.move_on_after(FOLLOW_POLL_S):
            await engine.changed.wait()


def _read_from(path: Path, pos: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, 256 * 1024, pos)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Command:
    args: type[Args]
    handler: Callable[[Engine, Any], Awaitable[Result]] | None = None
    stream: Callable[[Engine, Any, dict[str, Any]], Events] | None = None


COMMAND_TABLE: dict[str, Command] = {
    "ping": Command(NoArgs, h_ping),
    "status": Command(NoArgs, h_status),
    "list": Command(NoArgs, h_list),
    "watch": Command(NoArgs, stream=s_watch),
    "show": Command(BatchArgs, h_show),
    "cancel": Command(BatchArgs, h_cancel),
    "retry": Command(BatchArgs, h_retry),
    "reset-breaker": Command(BatchArgs, h_reset_breaker),
    "pause": Command(PauseArgs, h_pause),
    "resume": Command(ResumeArgs, h_resume),
    "skip": Command(SkipArgs, h_skip),
    "logs": Command(LogsArgs, h_logs, stream=s_logs),
    "consent": Command(ConsentArgs, h_consent),
    "prune": Command(PruneArgs, h_prune),
}
assert set(COMMAND_TABLE) == set(COMMANDS), "protocol.COMMANDS and the server disagree"


# --- the wire -------------------------------------------------------------------------


def _line(obj: dict[str, Any]) -> bytes:
    return _encoder.encode(obj) + b"\n"


def error_line(req_id: object, code: str, message: str) -> bytes:
    return _line(
        {"v": VERSION, "id": req_id, "ok": False, "error": {"code": code, "message": message}}
    )


class Connection:
    def __init__(self, stream: anyio.abc.SocketStream, engine: Engine) -> None:
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
            args = msgspec.convert(req.args, command.args)
        except msgspec.ValidationError as e:
            await self.send(error_line(req.id, E_BAD_ARGS, f"{req.cmd}: {e}"))
            return True
        follow = getattr(args, "follow", True)
        if command.stream is not None and (command.handler is None or follow):
            final: dict[str, Any] = {}
            await self.stream_events(req.id, command.stream(self.engine, args, final), final)
            return False
        assert command.handler is not None
        try:
            result = await command.handler(self.engine, args)
        except BatchError as e:
            await self.send(error_line(req.id, e.code, e.message))
            return True
        except Exception as e:
            log.exception("control: %s failed", req.cmd)
            await self.send(error_line(req.id, E_INTERNAL, f"{req.cmd} failed: {e}"))
            return True
        await self.send(_line({"v": VERSION, "id": req.id, "ok": True, "result": result}))
        return True

    async def stream_events(self, req_id: object, events: Events, final: dict[str, Any]) -> None:
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
            except BatchError as e:
                await self.send(error_line(req_id, e.code, e.message))
            tg.cancel_scope.cancel()


def peer_uid(stream: anyio.abc.SocketStream) -> int | None:
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    try:
        creds = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


async def handle_client(stream: anyio.abc.SocketStream, engine: Engine) -> None:
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


async def serve(listener: anyio.abc.SocketListener, engine: Engine) -> None:
    async with listener:
        await listener.serve(lambda stream: handle_client(stream, engine))
