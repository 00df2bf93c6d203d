"""A claimed spool file becomes a batch (SPEC 3): exactly once, whatever a kill interrupts.

The spool hands over a claimed, validated file (``spool.Accepted``, in
``.claimed/``). Its batch is written durably first (``daemon.json`` with the
next ``seq``, then the batch dir), then the file is moved in as
``<batch dir>/source``. A kill between the two leaves a batch without a
source and the file still claimed: the next scan matches them by name and
SHA-256 and only moves the file. While state writes fail, nothing is
accepted: the file waits in ``.claimed/``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Protocol

from batchd import failpoints
from batchd.batch import Batch, new_batch
from batchd.classify import sanitize
from batchd.clock import Clock
from batchd.journal import Journal
from batchd.live import Live
from batchd.model import batch_id_for
from batchd.spool import Accepted
from batchd.spoolrules import claimed_batch, give_back_seq, take_seq
from batchd.store import Store, StoreError

log = logging.getLogger("batchd")


class Intake(Protocol):
    """What intake is given (the engine implements it)."""

    live: Live
    store: Store
    journal: Journal
    clock: Clock
    last_id_us: int

    def save_queue(self) -> bool: ...


def ingest(engine: Intake, acc: Accepted) -> None:
    """Turn a claimed spool file into a batch (or finish what a kill interrupted)."""
    live = engine.live
    states = (b.state for b in live.batches.values())
    batch_id = claimed_batch(acc.name, acc.sha256, states, engine.store.has_source)
    if batch_id is not None:
        log.info("spool: %s is %s (recovered after a crash)", sanitize(acc.name), batch_id)
        _move_source(engine, acc, batch_id)
        return
    if engine.journal.failure:
        return  # the disk is failing: the file waits in .claimed/ until it recovers
    new = _new(engine, acc)
    if new is None:
        return
    batch = new
    failpoints.hit("after_batch_write")
    live.batches[batch.batch_id] = batch
    _move_source(engine, acc, batch.batch_id)
    n = batch.state.total_features
    log.info(
        "spool: accepted %s as %s (seq %d, %d feature%s)",
        sanitize(acc.name),
        batch.batch_id,
        batch.state.seq,
        n,
        "" if n == 1 else "s",
    )
    live.touch()


def _new(engine: Intake, acc: Accepted) -> Batch | None:
    now = engine.clock.now()
    queue = engine.live.queue
    seq = take_seq(queue, now)
    parsed = acc.parsed
    if parsed.name == acc.name:  # named after the file: a name may hold anything
        parsed = dataclasses.replace(parsed, name=sanitize(acc.name, 200))
    batch = new_batch(
        batch_id=_new_id(engine, now),
        seq=seq,
        parsed=parsed,
        features_file=acc.name,
        source_sha256=acc.sha256,
        now=now,
    )
    if not engine.save_queue():
        give_back_seq(queue, seq)
        return None
    if not engine.journal.create(batch, queue):
        engine.live.set_problem("state_write", engine.journal.failure)
        return None
    return batch


def _new_id(engine: Intake, now: float) -> str:
    """``batch-YYYYMMDD-HHMMSS-ffffff``, unique even for two files in one microsecond."""
    us = max(int(now * 1_000_000), engine.last_id_us + 1)
    while True:
        batch_id = batch_id_for(us / 1_000_000)
        taken = batch_id in engine.live.batches
        if not taken and not os.path.lexists(engine.store.batches / batch_id):
            break
        us += 1
    engine.last_id_us = us
    return batch_id


def _move_source(engine: Intake, acc: Accepted, batch_id: str) -> None:
    try:
        engine.store.move_in_source(acc.path, batch_id)
    except (OSError, StoreError) as e:
        log.error(
            "spool: cannot move %s into %s: %s; it is tried again at the next scan",
            sanitize(acc.name),
            batch_id,
            e,
        )
