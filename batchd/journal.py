"""Persistence of the daemon's truth: audit first, only what changed, and retried on failure.

The engine calls ``save`` after every transition of a batch and ``save_queue``
after every change of ``daemon.json``. For a batch, the audit records of the
decision are appended first (SPEC 4: after a crash the audit may hold a
decision the state never applied, never the reverse), then
``retry_state.json`` if it changed (compared by its encoding: no flag to
carry around), then ``state.json``. A write that fails (disk full, I/O error)
leaves the previous files intact; the journal remembers what is unwritten
(including audit records) and ``flush`` writes it again. While anything is
unwritten, ``failure`` says why and the queue starts nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from batchd import failpoints
from batchd.batch import Batch
from batchd.model import AuditEvent, DaemonState
from batchd.store import Store, StoreError, encode

log = logging.getLogger("batchd")


class Journal:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.failure: str | None = None  # why something is still unwritten
        self._retry_written: dict[str, bytes] = {}
        self._unwritten: set[str] = set()  # batch ids
        self._audit: dict[str, list[AuditEvent]] = {}
        self._queue_unwritten: DaemonState | None = None

    def loaded(self, batch: Batch) -> None:
        """``batch`` is on disk as it is now (loaded, or just created)."""
        self._retry_written[batch.batch_id] = encode(batch.retry)

    def forget(self, batch_id: str) -> None:
        """The batch is gone (pruned): nothing of it is to be written any more."""
        self._retry_written.pop(batch_id, None)
        self._unwritten.discard(batch_id)
        self._audit.pop(batch_id, None)

    def save(self, batch: Batch, events: Iterable[AuditEvent] = ()) -> bool:
        """Write the batch (audit first); False when it failed (it is retried by ``flush``)."""
        bid = batch.batch_id
        pending = self._audit.pop(bid, []) + list(events)
        try:
            if pending:
                self.store.append_audit(bid, pending)
                pending = []
                failpoints.hit("after_audit_write")
            retry = encode(batch.retry)
            if self._retry_written.get(bid) != retry:
                self.store.save_retry(batch.retry, retry)
                self._retry_written[bid] = retry
            self.store.save_state(batch.state)
        except (OSError, StoreError) as e:
            if pending:
                self._audit[bid] = pending
            self._unwritten.add(bid)
            self._failed(f"cannot write the state of {bid}: {e}")
            return False
        self._unwritten.discard(bid)
        return True

    def create(self, batch: Batch, queue: DaemonState) -> bool:
        """Write a new batch's directory and files; on failure ``daemon.json`` is the probe
        that ``flush`` writes again to learn that the disk works."""
        try:
            self.store.create_batch(batch.state, batch.retry)
        except (OSError, StoreError) as e:
            self._queue_unwritten = queue
            self._failed(f"cannot write the new batch {batch.batch_id}: {e}")
            return False
        self.loaded(batch)
        return True

    def save_queue(self, queue: DaemonState) -> bool:
        try:
            self.store.save_daemon(queue)
        except (OSError, StoreError) as e:
            self._queue_unwritten = queue
            self._failed(f"cannot write daemon.json: {e}")
            return False
        self._queue_unwritten = None
        return True

    def flush(self, batches: Mapping[str, Batch]) -> bool:
        """Write again what failed; True when everything is on disk."""
        if self._queue_unwritten is not None and not self.save_queue(self._queue_unwritten):
            return False
        for bid in sorted(self._unwritten):
            batch = batches.get(bid)
            if batch is None:
                self.forget(bid)
            elif not self.save(batch):
                return False
        if self.failure is not None:
            log.info("state: writes succeed again; the queue continues")
            self.failure = None
        return True

    def _failed(self, message: str) -> None:
        if self.failure is None:
            log.error("state: %s; the queue is paused until the write succeeds", message)
        self.failure = message
