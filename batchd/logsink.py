"""An attempt's output on its way out: the capped log file and the tails kept for judging.

A leaf of the standard library only: the keeper (``batchd/keeper.py``, a small
process of its own that must start fast) and the daemon's hooks
(``engines/process.py``) both write through it. ``LogSink`` appends to the
attempt log and, past ``max_bytes``, keeps the first and the last halves with
a marker between; ``Tail`` keeps the last bytes of one stream in memory for
classification. Nothing here decides what output means.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from pathlib import Path

STDERR_TAIL = 64 * 1024
STDOUT_TAIL = 256 * 1024
CHUNK = 64 * 1024  # one read of a pipe

NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


class LogSink:
    """The attempt log: appended raw, 0600; past ``max_bytes`` keep the first and last halves.

    A log that cannot be written (a full disk, a quota, an I/O error) never
    stops the run: from the first failed write on, output is only drained (the
    tails for classification are kept elsewhere) and ``error`` says why the log
    is incomplete. A log that cannot be opened for another reason (a symbolic
    link, a missing directory) raises ``OSError``: not something to run past.
    """

    def __init__(self, path: Path | None, max_bytes: int) -> None:
        self.path = path
        self.fd: int | None = None
        self.error: str | None = None
        half = max_bytes // 2 if max_bytes > 0 else 1 << 62
        self.half = half
        self.head_left = half
        self.tail: deque[bytes] = deque()
        self.tail_bytes = 0
        self.dropped = 0
        if path is not None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                self.fd = os.open(path, flags, 0o600)
            except OSError as e:
                if e.errno not in NO_ROOM:
                    raise  # a link or a missing directory: not something to run past
                self.error = f"cannot create the log: {e.strerror}"
                return
            self.head_left = max(0, half - os.fstat(self.fd).st_size)

    def _write(self, data: bytes) -> None:
        if self.fd is None:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as e:
            self.error = f"cannot write the log: {e.strerror}"
            os.close(self.fd)
            self.fd = None

    def write(self, data: bytes) -> None:
        if self.fd is None:
            return
        if self.head_left > 0:
            part = data[: self.head_left]
            self._write(part)
            self.head_left -= len(part)
            data = data[len(part) :]
            if not data:
                return
        self.tail.append(data)
        self.tail_bytes += len(data)
        while self.tail_bytes - len(self.tail[0]) >= self.half:
            old = self.tail.popleft()
            self.tail_bytes -= len(old)
            self.dropped += len(old)

    def close(self) -> None:
        if self.fd is None:
            return
        tail = b"".join(self.tail)
        if self.tail_bytes > self.half:
            cut = self.tail_bytes - self.half
            self.dropped += cut
            tail = tail[cut:]
        if self.dropped:
            self._write(
                f"\n[batchd: {self.dropped} bytes omitted here; the log keeps the first "
                f"and the last {self.half} bytes]\n".encode()
            )
        if tail:
            self._write(tail)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Tail:
    """The last ``cap`` bytes of one stream, and how many bytes it carried in all."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.cap:
            del self.buf[: len(self.buf) - self.cap]

    def value(self) -> bytes:
        return bytes(self.buf[-self.cap :])
