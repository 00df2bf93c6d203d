"""The control commands that only read (SPEC 7): ``logs``, its ``--follow`` stream, ``watch``.

A feature's log is read from the attempt's log file (the last ``LOG_TEXT_MAX``
bytes, never through a link), or followed as it grows, across attempts, until
the feature has ended; ``watch`` sends a status event after every change. Given
only the views' read surface (``views.Reader``): nothing here changes a batch,
writes a file or speaks on the socket (streams are async generators that
``server`` sends out).
"""

from __future__ import annotations

import codecs
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from batchd import shapes, views
from batchd.batch import Batch
from batchd.commands import resolve
from batchd.errors import BadArgs, BadState

LOG_TEXT_MAX = 512 * 1024
FOLLOW_POLL_S = 0.25
WATCH_INTERVAL_S = 0.1


def _log_target(engine: views.Reader, batch: Batch, index: int | None) -> tuple[int, int, Path]:
    """The log of the latest attempt of ``index`` (default: running, else last run)."""
    s = batch.state
    if index is None:
        slot = engine.live.slot_for(batch.batch_id)
        if slot is not None:
            index = slot.index
        elif s.processing_history:
            index = s.processing_history[-1].feature_index
        else:
            raise BadState(f"{batch.batch_id}: no feature has run yet")
    if not 0 <= index < s.total_features:
        raise BadArgs(
            f"{batch.batch_id} has {s.total_features} features "
            f"(index 0 to {s.total_features - 1}); there is no index {index}",
        )
    last = batch.last_attempt.get(index)
    number = last[0] if last is not None else batch.attempt_number(index)
    return index, number, engine.log_path(batch, index, number)


def _read_tail(path: Path, limit: int) -> tuple[str, bool]:
    """The last ``limit`` bytes of a log, decoded, and whether it was cut."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "", False
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - limit)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace"), start > 0


async def logs(engine: views.Reader, a: shapes.LogsArgs) -> shapes.Logs:
    batch = resolve(engine, a["batch_id"])
    index, attempt, path = _log_target(engine, batch, a.get("index"))
    if batch.last_attempt.get(index) is None:
        raise BadState(f"{batch.batch_id}: feature {index + 1} has not run yet")
    text, truncated = _read_tail(path, LOG_TEXT_MAX)
    reply: shapes.Logs = {
        "batch_id": batch.batch_id,
        "index": index,
        "attempt": attempt,
        "path": str(path),
        "text": text,
        "truncated": truncated,
        "session_id": views.session_of(batch, index, attempt),
    }
    if a.get("all"):
        reply["attempts"] = []
        for n in range(1, attempt + 1):
            p = engine.log_path(batch, index, n)
            t, cut = _read_tail(p, LOG_TEXT_MAX)
            reply["attempts"].append(
                {
                    "index": index,
                    "attempt": n,
                    "path": str(p),
                    "text": t,
                    "truncated": cut,
                    "session_id": views.session_of(batch, index, n),
                }
            )
    return reply


Event = shapes.LogEvent | shapes.AttemptEvent | shapes.WaitingEvent


async def follow_logs(
    engine: views.Reader, a: shapes.LogsArgs, final: dict[str, object]
) -> AsyncIterator[Event]:
    """Stream a feature's log as it grows, across attempts, until the feature has ended.
    A feature that has not started yet is waited for."""
    batch = resolve(engine, a["batch_id"])
    index, attempt, path = _log_target(engine, batch, a.get("index"))
    if batch.last_attempt.get(index) is None:
        yield {"type": "waiting", "index": index, "message": "the feature has not started yet"}
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
            path = engine.log_path(batch, index, attempt)
            pos = 0
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            yield {"type": "attempt", "index": index, "attempt": attempt}
            continue
        running = engine.live.slot_for(batch.batch_id, index) is not None
        if (index in batch.settled or batch.finished) and not running:
            final.update({"batch_id": batch.batch_id, "index": index, "ended": True})
            return
        with anyio.move_on_after(FOLLOW_POLL_S):
            await engine.live.changed.wait()


def _read_from(path: Path, pos: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, 256 * 1024, pos)
    finally:
        os.close(fd)


async def watch(
    engine: views.Reader, _: shapes.NoArgs, final: dict[str, object]
) -> AsyncIterator[shapes.StatusEvent]:
    """A status event now and after every change (at most 10 a second)."""
    seen = -1
    while True:
        live = engine.live
        changed = live.changed
        if live.version == seen:
            await changed.wait()
        seen = live.version
        yield {"type": "status", "status": views.status(engine)}
        await anyio.sleep(WATCH_INTERVAL_S)
