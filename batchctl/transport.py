"""batchctl's wire: the control socket, line framing, one call or a stream.

Owns connecting, sending one request and reading its event lines and reply;
a broken connection is ``Lost``, a ``Failure`` (``errors``) like every error
that ends the run. Standard library only (``socket`` and ``json``): every read
command pays for this module at start-up. It never prints anything: the
command modules do. It never spells a wire name itself:
commands, version and error codes come from ``batchd.protocol``.
"""

from __future__ import annotations

import json
import os
import socket

from batchctl.errors import (
    E_FAILED,
    E_NO_REPLY,
    E_NOT_RUNNING,
    EXIT_DOWN,
    EXIT_FAIL,
    HOW_TO_START,
    Failure,
    die,
)
from batchd.protocol import COMMANDS, MAX_LINE_BYTES, VERSION

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~2 ms)

if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

REQUEST_TIMEOUT_S = 30.0  # a normal request; watch, wait and logs --follow wait longer
RECV_BYTES = 256 * 1024


class Lost(Failure):
    """The daemon closed the connection or it broke (it stopped, or restarted)."""


def connect(path: Path, timeout: float | None) -> socket.socket:
    """A connected socket, or ``Failure`` with exit 3 that says how to start the daemon."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(REQUEST_TIMEOUT_S)
    try:
        s.connect(os.fspath(path))
    except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as e:
        s.close()
        die(
            f"batchd is not running: nothing listens on {path} ({e.strerror})\n  {HOW_TO_START}",
            EXIT_DOWN,
            E_NOT_RUNNING,
        )
    except OSError as e:
        s.close()
        die(
            f"cannot connect to batchd at {path}: {e.strerror or e}\n  {HOW_TO_START}",
            EXIT_DOWN,
            E_NOT_RUNNING,
        )
    s.settimeout(timeout)
    return s


class Connection:
    """One request on one connection, then its event lines and its reply.

    Lines have no size cap on this side (a ``show`` reply may exceed 1 MiB). A
    ``TimeoutError`` from ``message`` loses nothing: the next call goes on.
    """

    def __init__(self, path: Path, timeout: float | None) -> None:
        self.path = path
        self.sock = connect(path, timeout)
        self.buf = bytearray()
        self.scanned = 0

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def send(self, cmd: str, args: dict[str, Any]) -> None:
        assert cmd in COMMANDS, cmd
        request = {"v": VERSION, "id": 1, "cmd": cmd, "args": args}
        line = json.dumps(request, ensure_ascii=False).encode() + b"\n"
        if len(line) > MAX_LINE_BYTES:
            die(f"request too large ({len(line)} bytes, the limit is {MAX_LINE_BYTES})")
        try:
            self.sock.sendall(line)
        except OSError as e:
            raise self.lost(e) from None

    def lost(self, e: OSError) -> Lost:
        return Lost(
            f"lost the connection to batchd at {self.path}: {e.strerror or e}",
            EXIT_FAIL,
            E_NO_REPLY,
        )

    def message(self) -> dict[str, Any]:
        """The next line, decoded; raises ``TimeoutError`` when the socket timeout passes."""
        while True:
            nl = self.buf.find(b"\n", self.scanned)
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[: nl + 1]
                self.scanned = 0
                return decode_line(line)
            self.scanned = len(self.buf)
            try:
                chunk = self.sock.recv(RECV_BYTES)
            except TimeoutError:
                raise
            except OSError as e:
                raise self.lost(e) from None
            if not chunk:
                raise Lost(
                    "batchd closed the connection without a reply (did it stop? see its log)",
                    EXIT_FAIL,
                    E_NO_REPLY,
                )
            self.buf += chunk


def decode_line(line: bytes) -> dict[str, Any]:
    try:
        msg = json.loads(line)
    except ValueError:
        msg = None
    if not isinstance(msg, dict):
        shown = repr(line[:60]) + ("…" if len(line) > 60 else "")
        die(f"batchd sent a line that is not a JSON object: {shown}", EXIT_FAIL, E_NO_REPLY)
    return msg


def result_of(msg: dict[str, Any]) -> Any:
    """The result of an ``ok`` reply; an error reply ends the run (exit 1, the daemon's code)."""
    if msg.get("ok") is True:
        return msg["result"]
    err = msg.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("message"), str):
        die(f"batchd sent a malformed error reply: {msg!r}", EXIT_FAIL, E_NO_REPLY)
    raise Failure(err["message"], EXIT_FAIL, str(err.get("code") or E_FAILED))


def call(
    path: Path, cmd: str, args: dict[str, Any] | None = None, timeout: float = REQUEST_TIMEOUT_S
) -> Any:
    """Send one request and return its result (a ``batchd.shapes`` reply; events are skipped)."""
    with Connection(path, timeout) as conn:
        conn.send(cmd, args or {})
        while True:
            try:
                msg = conn.message()
            except TimeoutError:
                die(
                    f"batchd did not answer `{cmd}` within {timeout:g}s (socket {path}); "
                    "see its log (`journalctl --user -u batchd`)",
                    EXIT_FAIL,
                    E_NO_REPLY,
                )
            if "event" not in msg:
                return result_of(msg)
