"""One function per control command (SPEC 7): validated args in, a reply out.

Each command asks the pure core (``Batch``, ``queue``, ``prunable``) for the
change, makes it durable before it replies (``Control.require_durable``),
logs it, and wakes the loop. Stopping a running feature waits until its
outcome is recorded. A command that does not apply raises a domain error
(``errors``); the server maps it to the wire. No socket IO here: ``server``
owns the wire. Reading a feature's log (``logs``, its ``--follow`` stream) and
the ``watch`` stream are ``readcommands``'.

Wherever a batch is named, its id, its ``seq`` or ``last`` will do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Literal, Protocol

import msgspec

from batchd import __version__, limitwait, queue, reportshapes, shapes, views, wording
from batchd.batch import Batch
from batchd.errors import BadArgs, NotDurable, UnknownBatch
from batchd.model import FINISHED, AuditEvent, parse_iso, utc_iso
from batchd.protocol import is_batch_id
from batchd.report import DEFAULT_SINCE_S
from batchd.store import Store, StoreError
from batchd.transitions import Settings
from batchd.worktreeplan import Problem

log = logging.getLogger("batchd")


class Control(views.Reader, Protocol):
    """What the commands are given (the engine implements it): the read surface of the
    views, plus durable writes, the store, and the daemon's own controls."""

    store: Store

    @property
    def settings(self) -> Settings: ...

    @property
    def write_failure(self) -> str | None: ...

    def require_durable(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> None: ...

    def save_queue(self) -> bool: ...

    def forget(self, batch_id: str) -> None: ...

    def announce_done(self, batch: Batch) -> None: ...

    def poke_spool(self) -> None: ...

    def reload(self) -> str | None: ...

    def end_limit_wait(self, profile: str) -> None: ...

    async def discard_worktrees(self, batch: Batch) -> None: ...

    @property
    def restart_via(self) -> Literal["systemd", "exec"]: ...

    def restart(self) -> None: ...


def resolve(engine: views.Reader, ref: shapes.BatchRef | None) -> Batch:
    """The batch named by an id, a ``seq`` or ``last``; ``UnknownBatch`` otherwise."""
    batches = engine.live.batches
    batch: Batch | None = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        seq = int(ref)
        batch = next((b for b in batches.values() if b.state.seq == seq), None)
    elif ref == "last":
        batch = max(batches.values(), key=lambda b: b.state.seq, default=None)
    elif isinstance(ref, str) and is_batch_id(ref):
        batch = batches.get(ref)
    if batch is None:
        raise UnknownBatch(
            f"no batch {ref!r} (give a batch id, its seq or 'last'); 'batchctl list' shows them"
        )
    return batch


def prunable(batches: Iterable[Batch], older_than_days: int, now: float) -> list[str]:
    """The finished batches last changed more than ``older_than_days`` ago. Pure."""
    cut = now - older_than_days * 86400
    return [
        b.batch_id
        for b in batches
        if b.state.status in FINISHED and parse_iso(b.state.updated_at) < cut
    ]


async def ping(engine: Control, _: shapes.NoArgs) -> shapes.Ping:
    engine.poke_spool()  # 'batchctl submit' pings after writing: pick the request up now
    return {"pong": True, "pid": os.getpid(), "version": __version__}


async def status(engine: Control, _: shapes.NoArgs) -> shapes.Status:
    return views.status(engine)


async def list_(engine: Control, _: shapes.NoArgs) -> shapes.BatchList:
    return views.list_batches(engine)


async def show(engine: Control, a: shapes.BatchArgs) -> shapes.Show:
    return views.show(engine, resolve(engine, a["batch_id"]))


async def pause(engine: Control, a: shapes.PauseArgs) -> shapes.Paused:
    now_flag = a.get("now", False)
    ref = a.get("batch_id")
    if ref is None:
        queue.pause(engine.live.queue, queue.PAUSE_USER, engine.clock.now())
        if not engine.save_queue():
            raise NotDurable(f"the queue is paused but {engine.write_failure}")
        log.info("queue paused by the user%s", " (stopping what runs)" if now_flag else "")
        engine.live.touch()
        stopped = await engine.live.stop_all_runs("paused by the user") if now_flag else 0
        return _paused(None, True, None, stopped)
    batch = resolve(engine, ref)
    batch.pause(engine.clock.now())
    engine.require_durable(batch)
    log.info("%s: paused by the user", batch.batch_id)
    engine.live.touch()
    stopped = 0
    if now_flag and await engine.live.stop_run(batch, "paused by the user"):
        stopped = 1
    return _paused(batch.batch_id, engine.live.queue.queue_paused, batch.state.status, stopped)


def _paused(bid: str | None, queue_paused: bool, st: str | None, n: int) -> shapes.Paused:
    return {
        "batch_id": bid,
        "queue_paused": queue_paused,
        "status": st,
        "stopped_running": n > 0,
        "stopped": n,
    }


async def resume(engine: Control, a: shapes.ResumeArgs) -> shapes.Resumed:
    ref, all_ = a.get("batch_id"), a.get("all", False)
    if ref is None and not all_:
        raise BadArgs("resume needs a batch (its id, seq or 'last') or --all")
    now = engine.clock.now()
    targets = list(engine.live.batches.values()) if all_ else [resolve(engine, ref)]
    resumed, notes = [], []
    for batch in targets:
        if batch.finished and all_:
            continue
        if not batch.resume(now):
            continue
        if batch.enforce_cost_cap(engine.settings, now):
            notes.append(wording.cost_paused_again(batch, engine.settings, engine.cfg.paths.config))
        else:
            resumed.append(batch.batch_id)
        engine.require_durable(batch)
    queue_resumed = all_ and queue.resume(engine.live.queue, now)
    if queue_resumed and not engine.save_queue():
        raise NotDurable(f"the queue is resumed but {engine.write_failure}")
    what = ", ".join(resumed) + (" and the queue" if queue_resumed else "")
    log.info("resumed by the user: %s", what or "nothing was paused")
    engine.live.touch()
    return {
        "resumed": resumed,
        "queue_resumed": queue_resumed,
        "queue_paused": engine.live.queue.queue_paused,
        "notes": notes,
    }


async def cancel(engine: Control, a: shapes.BatchArgs) -> shapes.Cancelled:
    batch = resolve(engine, a["batch_id"])
    batch.cancel(engine.clock.now())
    engine.require_durable(batch)
    log.info("%s: cancelled by the user", batch.batch_id)
    engine.live.touch()
    stopped = await engine.live.stop_run(batch, "cancelled by the user")
    engine.announce_done(batch)
    return {"batch_id": batch.batch_id, "status": batch.state.status, "stopped_running": stopped}


async def retry(engine: Control, a: shapes.BatchArgs) -> shapes.Requeued:
    batch = resolve(engine, a["batch_id"])
    indices = batch.retry_failed(engine.clock.now())
    engine.require_durable(batch)
    log.info(
        "%s: failed features %s queued again by the user",
        batch.batch_id,
        ", ".join(str(i + 1) for i in indices),
    )
    engine.live.touch()
    return {"batch_id": batch.batch_id, "requeued": indices, "status": batch.state.status}


async def skip(engine: Control, a: shapes.SkipArgs) -> shapes.Skipped:
    batch = resolve(engine, a["batch_id"])
    index = a["index"]
    finished = batch.skip(index, engine.clock.now())
    engine.require_durable(batch)
    log.info("%s: feature %d skipped by the user", batch.batch_id, index + 1)
    engine.live.touch()
    stopped = await engine.live.stop_run(batch, "skipped by the user", index)
    if finished:
        engine.announce_done(batch)
    return {
        "batch_id": batch.batch_id,
        "index": index,
        "status": batch.state.status,
        "stopped_running": stopped,
    }


async def reset_breaker(engine: Control, a: shapes.BatchArgs) -> shapes.BreakerReset:
    batch = resolve(engine, a["batch_id"])
    event = batch.reset_breaker(engine.clock.now())
    engine.require_durable(batch, (event,))
    log.info("%s: circuit breaker reset by the user", batch.batch_id)
    engine.live.touch()
    return {
        "batch_id": batch.batch_id,
        "circuit_breaker_open": batch.retry.circuit_breaker_open,
        "consecutive_failures": batch.retry.consecutive_failures,
    }


async def consent(engine: Control, a: shapes.ConsentArgs) -> shapes.Consent:
    enabled = a["enabled"]
    now = utc_iso(engine.clock.now())
    user = msgspec.structs.replace(engine.live.user, batch_retry_enabled=enabled, updated_at=now)
    path = engine.store.root / "user_state.json"
    try:
        engine.store.save_user(user)
    except (OSError, StoreError) as e:
        raise NotDurable(f"cannot save {path}: {e}") from None
    engine.live.user = user
    log.info("retry consent set to %s by the user", "enabled" if enabled else "disabled")
    engine.live.touch()
    return {"retry_enabled": enabled, "path": str(path)}


async def prune(engine: Control, a: shapes.PruneArgs) -> shapes.Pruned:
    days = a.get("older_than_days", 30)
    dry_run = a.get("dry_run", False)
    old = prunable(engine.live.batches.values(), days, engine.clock.now())
    if dry_run:
        return {"removed": old, "dry_run": True}
    for bid in old:
        try:
            await engine.discard_worktrees(engine.live.batches[bid])
        except (OSError, Problem) as e:  # the batch stays: prune again once it is fixed
            raise NotDurable(f"cannot remove the worktrees of {bid}: {e}") from None
        try:
            engine.store.remove_batch(bid)
        except (OSError, StoreError) as e:
            raise NotDurable(f"cannot remove {bid}: {e}") from None
        engine.forget(bid)
    if old:
        log.info("pruned %d finished batches: %s", len(old), ", ".join(old))
        engine.live.touch()
    return {"removed": old, "dry_run": False}


async def reload(engine: Control, _: shapes.NoArgs) -> shapes.Reloaded:
    """Re-read the configuration now, as SIGHUP does; a bad one is an error reply."""
    error = engine.reload()
    if error is not None:
        raise BadArgs(error)
    return {"config": str(engine.cfg.paths.config), "slots": engine.cfg.queue.slots}


async def limit(engine: Control, a: shapes.LimitArgs) -> shapes.Limits:
    """The usage-limit waits; with ``clear``, end them now (one profile, or all): the next
    feature of each is its probe."""
    cleared: list[str] = []
    if a.get("clear", False):
        profile = a.get("runner")
        waits = engine.live.queue.limit_waits
        if profile is not None and profile not in waits:
            known = f"waiting: {', '.join(sorted(waits))}" if waits else "none is waiting"
            raise BadArgs(f"runner profile {profile!r} is not waiting for a usage limit ({known})")
        for name in limitwait.clear(waits, profile):
            engine.end_limit_wait(name)
            cleared.append(name)
        if cleared:
            log.info("usage-limit wait ended by the user: %s", ", ".join(cleared))
    return {"limit_waits": views.limit_waits(engine), "cleared": cleared}


async def report(engine: Control, a: reportshapes.ReportArgs) -> reportshapes.Report:
    """The morning report (SPEC 14): the named batches (ids, seqs or 'last'), else every
    batch active or finished in the last ``since_s`` seconds (default 24 h)."""
    refs = a.get("batch_ids") or []
    ids = list(dict.fromkeys(resolve(engine, ref).batch_id for ref in refs))
    since_s = a.get("since_s", DEFAULT_SINCE_S)
    return views.report_of(engine, ids or None, since_s)


async def restart(engine: Control, _: shapes.NoArgs) -> shapes.Restarting:
    """Say what a restart will do; the server then calls ``Control.restart`` (SPEC 16)."""
    running = len(engine.live.running)
    log.info("restart asked: leaving %d running features running, coming back", running)
    return {"pid": os.getpid(), "runs_left": running, "via": engine.restart_via}
