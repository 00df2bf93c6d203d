"""One function per control command (SPEC 7): validated args in, a reply out.

Each command asks the pure core (``Batch``, ``queue``) for the change, makes
it durable before it replies (``Engine.require_durable``), logs it, and wakes
the loop. Stopping a running feature waits until its outcome is recorded.
No socket IO here: ``server`` owns the wire; streams are async generators
that the server sends out.

Wherever a batch is named, its id, its ``seq`` or ``last`` will do.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec

from batchd import __version__, queue, shapes, views
from batchd.batch import Batch, BatchError
from batchd.engine import Engine
from batchd.model import FINISHED, parse_iso, utc_iso
from batchd.protocol import E_BAD_ARGS, E_BAD_STATE, E_IO, E_UNKNOWN_BATCH, is_batch_id
from batchd.store import StoreError

log = logging.getLogger("batchd")

LOG_TEXT_MAX = 512 * 1024
FOLLOW_POLL_S = 0.25
WATCH_INTERVAL_S = 0.1


def resolve(engine: Engine, ref: shapes.BatchRef | None) -> Batch:
    """The batch named by an id, a ``seq`` or ``last``; ``unknown_batch`` otherwise."""
    batch: Batch | None = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        seq = int(ref)
        batch = next((b for b in engine.batches.values() if b.state.seq == seq), None)
    elif ref == "last":
        batch = max(engine.batches.values(), key=lambda b: b.state.seq, default=None)
    elif isinstance(ref, str) and is_batch_id(ref):
        batch = engine.batches.get(ref)
    if batch is None:
        raise BatchError(
            E_UNKNOWN_BATCH,
            f"no batch {ref!r} (give a batch id, its seq or 'last'); 'batchctl list' shows them",
        )
    return batch


async def ping(engine: Engine, _: shapes.NoArgs) -> shapes.Ping:
    engine.poke_spool()  # 'batchctl submit' pings after writing: pick the request up now
    return {"pong": True, "pid": os.getpid(), "version": __version__}


async def status(engine: Engine, _: shapes.NoArgs) -> shapes.Status:
    return views.status(engine)


async def list_(engine: Engine, _: shapes.NoArgs) -> shapes.BatchList:
    return views.list_batches(engine)


async def show(engine: Engine, a: shapes.BatchArgs) -> shapes.Show:
    return views.show(engine, resolve(engine, a["batch_id"]))


async def pause(engine: Engine, a: shapes.PauseArgs) -> shapes.Paused:
    now_flag = a.get("now", False)
    ref = a.get("batch_id")
    if ref is None:
        queue.pause(engine.daemon, queue.PAUSE_USER, engine.clock.now())
        if not engine.save_queue():
            raise BatchError(E_IO, f"the queue is paused but {engine.journal.failure}")
        log.info("queue paused by the user%s", " (stopping what runs)" if now_flag else "")
        engine.touch()
        stopped = await engine.stop_all_runs("paused by the user") if now_flag else 0
        return _paused(None, True, None, stopped)
    batch = resolve(engine, ref)
    batch.pause(engine.clock.now())
    engine.require_durable(batch)
    log.info("%s: paused by the user", batch.batch_id)
    engine.touch()
    stopped = 0
    if now_flag and await engine.stop_run(batch, "paused by the user"):
        stopped = 1
    return _paused(batch.batch_id, engine.daemon.queue_paused, batch.state.status, stopped)


def _paused(bid: str | None, queue_paused: bool, st: str | None, n: int) -> shapes.Paused:
    return {
        "batch_id": bid,
        "queue_paused": queue_paused,
        "status": st,
        "stopped_running": n > 0,
        "stopped": n,
    }


async def resume(engine: Engine, a: shapes.ResumeArgs) -> shapes.Resumed:
    ref, all_ = a.get("batch_id"), a.get("all", False)
    if ref is None and not all_:
        raise BatchError(E_BAD_ARGS, "resume needs a batch (its id, seq or 'last') or --all")
    now = engine.clock.now()
    targets = list(engine.batches.values()) if all_ else [resolve(engine, ref)]
    resumed, notes = [], []
    for batch in targets:
        if batch.finished and all_:
            continue
        if not batch.resume(now):
            continue
        if batch.enforce_cost_cap(engine.settings, now):
            notes.append(_cost_note(engine, batch))
        else:
            resumed.append(batch.batch_id)
        engine.require_durable(batch)
    queue_resumed = all_ and queue.resume(engine.daemon, now)
    if queue_resumed and not engine.save_queue():
        raise BatchError(E_IO, f"the queue is resumed but {engine.journal.failure}")
    what = ", ".join(resumed) + (" and the queue" if queue_resumed else "")
    log.info("resumed by the user: %s", what or "nothing was paused")
    engine.touch()
    return {
        "resumed": resumed,
        "queue_resumed": queue_resumed,
        "queue_paused": engine.daemon.queue_paused,
        "notes": notes,
    }


def _cost_note(engine: Engine, batch: Batch) -> str:
    return (
        f"{batch.batch_id} paused again at once: its cost {batch.state.cost_usd:.4f} USD "
        f"reached limits.max_cost_usd ({engine.settings.max_cost_usd:g}); raise the limit in "
        f"{engine.cfg.paths.config} and reload ('batchctl reload'), then resume it"
    )


async def cancel(engine: Engine, a: shapes.BatchArgs) -> shapes.Cancelled:
    batch = resolve(engine, a["batch_id"])
    batch.cancel(engine.clock.now())
    engine.require_durable(batch)
    log.info("%s: cancelled by the user", batch.batch_id)
    engine.touch()
    stopped = await engine.stop_run(batch, "cancelled by the user")
    engine.announce_done(batch)
    return {"batch_id": batch.batch_id, "status": batch.state.status, "stopped_running": stopped}


async def retry(engine: Engine, a: shapes.BatchArgs) -> shapes.Requeued:
    batch = resolve(engine, a["batch_id"])
    indices = batch.retry_failed(engine.clock.now())
    engine.require_durable(batch)
    log.info(
        "%s: failed features %s queued again by the user",
        batch.batch_id,
        ", ".join(str(i + 1) for i in indices),
    )
    engine.touch()
    return {"batch_id": batch.batch_id, "requeued": indices, "status": batch.state.status}


async def skip(engine: Engine, a: shapes.SkipArgs) -> shapes.Skipped:
    batch = resolve(engine, a["batch_id"])
    index = a["index"]
    finished = batch.skip(index, engine.clock.now())
    engine.require_durable(batch)
    log.info("%s: feature %d skipped by the user", batch.batch_id, index + 1)
    engine.touch()
    stopped = await engine.stop_run(batch, "skipped by the user", index)
    if finished:
        engine.announce_done(batch)
    return {
        "batch_id": batch.batch_id,
        "index": index,
        "status": batch.state.status,
        "stopped_running": stopped,
    }


async def reset_breaker(engine: Engine, a: shapes.BatchArgs) -> shapes.BreakerReset:
    batch = resolve(engine, a["batch_id"])
    event = batch.reset_breaker(engine.clock.now())
    engine.require_durable(batch, (event,))
    log.info("%s: circuit breaker reset by the user", batch.batch_id)
    engine.touch()
    return {
        "batch_id": batch.batch_id,
        "circuit_breaker_open": batch.retry.circuit_breaker_open,
        "consecutive_failures": batch.retry.consecutive_failures,
    }


async def consent(engine: Engine, a: shapes.ConsentArgs) -> shapes.Consent:
    enabled = a["enabled"]
    now = utc_iso(engine.clock.now())
    user = msgspec.structs.replace(engine.user, batch_retry_enabled=enabled, updated_at=now)
    path = engine.store.root / "user_state.json"
    try:
        engine.store.save_user(user)
    except (OSError, StoreError) as e:
        raise BatchError(E_IO, f"cannot save {path}: {e}") from None
    engine.user = user
    log.info("retry consent set to %s by the user", "enabled" if enabled else "disabled")
    engine.touch()
    return {"retry_enabled": enabled, "path": str(path)}


async def prune(engine: Engine, a: shapes.PruneArgs) -> shapes.Pruned:
    days = a.get("older_than_days", 30)
    dry_run = a.get("dry_run", False)
    cut = engine.clock.now() - days * 86400
    old = [
        b.batch_id
        for b in engine.batches.values()
        if b.state.status in FINISHED and parse_iso(b.state.updated_at) < cut
    ]
    if dry_run:
        return {"removed": old, "dry_run": True}
    for bid in old:
        try:
            engine.store.remove_batch(bid)
        except (OSError, StoreError) as e:
            raise BatchError(E_IO, f"cannot remove {bid}: {e}") from None
        del engine.batches[bid]
        engine.journal.forget(bid)
    if old:
        log.info("pruned %d finished batches: %s", len(old), ", ".join(old))
        engine.touch()
    return {"removed": old, "dry_run": False}


async def reload(engine: Engine, _: shapes.NoArgs) -> shapes.Reloaded:
    """Re-read the configuration now, as SIGHUP does; a bad one is an error reply."""
    error = engine.reload()
    if error is not None:
        raise BatchError(E_BAD_ARGS, error)
    return {"config": str(engine.cfg.paths.config), "slots": engine.slots}


# --- logs ----------------------------------------------------------------------------------


def _log_target(engine: Engine, batch: Batch, index: int | None) -> tuple[int, int, Path]:
    """The log of the latest attempt of ``index`` (default: running, else last run)."""
    s = batch.state
    if index is None:
        slot = engine.running.get(batch.batch_id)
        if slot is not None:
            index = slot.index
        elif s.processing_history:
            index = s.processing_history[-1].feature_index
        else:
            raise BatchError(E_BAD_STATE, f"{batch.batch_id}: no feature has run yet")
    if not 0 <= index < s.total_features:
        raise BatchError(
            E_BAD_ARGS,
            f"{batch.batch_id} has {s.total_features} features "
            f"(index 0 to {s.total_features - 1}); there is no index {index}",
        )
    last = batch.last_attempt.get(index)
    number = last[0] if last is not None else batch.attempt_number(index)
    return index, number, engine.store.log_path(batch.batch_id, index, number)


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


async def logs(engine: Engine, a: shapes.LogsArgs) -> shapes.Logs:
    batch = resolve(engine, a["batch_id"])
    index, attempt, path = _log_target(engine, batch, a.get("index"))
    if batch.last_attempt.get(index) is None:
        raise BatchError(E_BAD_STATE, f"{batch.batch_id}: feature {index + 1} has not run yet")
    text, truncated = _read_tail(path, LOG_TEXT_MAX)
    reply: shapes.Logs = {
        "batch_id": batch.batch_id,
        "index": index,
        "attempt": attempt,
        "path": str(path),
        "text": text,
        "truncated": truncated,
    }
    if a.get("all"):
        reply["attempts"] = []
        for n in range(1, attempt + 1):
            p = engine.store.log_path(batch.batch_id, index, n)
            t, cut = _read_tail(p, LOG_TEXT_MAX)
            reply["attempts"].append(
                {"index": index, "attempt": n, "path": str(p), "text": t, "truncated": cut}
            )
    return reply


Event = shapes.LogEvent | shapes.AttemptEvent | shapes.WaitingEvent


async def follow_logs(
    engine: Engine, a: shapes.LogsArgs, final: dict[str, object]
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
            path = engine.store.log_path(batch.batch_id, index, attempt)
            pos = 0
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            yield {"type": "attempt", "index": index, "attempt": attempt}
            continue
        slot = engine.running.get(batch.batch_id)
        running = slot is not None and slot.index == index
        if (index in batch.settled or batch.finished) and not running:
            final.update({"batch_id": batch.batch_id, "index": index, "ended": True})
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


async def watch(
    engine: Engine, _: shapes.NoArgs, final: dict[str, object]
) -> AsyncIterator[shapes.StatusEvent]:
    """A status event now and after every change (at most 10 a second)."""
    seen = -1
    while True:
        changed = engine.changed
        if engine.version == seen:
            await changed.wait()
        seen = engine.version
        yield {"type": "status", "status": views.status(engine)}
        await anyio.sleep(WATCH_INTERVAL_S)
