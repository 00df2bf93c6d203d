"""The output of a local process: the attempt log and the tails kept for classification.

``LogSink`` appends to the attempt log (0600, never through a symlink) and,
past ``max_log_bytes``, keeps the first and the last halves with a marker
between; a log that cannot be written never stops the run. ``Tail`` keeps the
last bytes of a stream in memory. ``codex_facts_of_log`` reads codex's events
from a log that a Slurm job wrote. No processes, no waiting: ``process`` feeds
them.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from pathlib import Path

from batchd.agents import CodexFacts, CodexStream

_CHUNK = 1 << 20


class LogSink:
    """The attempt log: appended raw, 0600; past ``max_bytes`` keep the first and last halves.

    A log that cannot be written (a full disk, a quota, an I/O error) never
    stops the run: from the first failed write on, output is only drained (the
    tails for classification are kept elsewhere) and ``error`` says why the log
    is incomplete.
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
                if e.errno not in _NO_ROOM:
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


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG)


class Tail:
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


def codex_facts_of_log(path: Path, offset: int) -> CodexFacts:
    """codex's events in an attempt log written by someone else (a Slurm job), from
    ``offset`` to its end, read in chunks: exact however long the log (SPEC 13)."""
    stream = CodexStream()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return stream.facts()
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        while chunk := f.read(_CHUNK):
            stream.feed(chunk)
    return stream.facts()
