"""The state directory of one daemon (SPEC section 4): layout, lock, load, quarantine.

Owns the names and places of the state files (``daemon.json``,
``user_state.json``, ``batches/<id>/state.json`` ...), the single-instance
lock, reading every batch back (an unreadable file is quarantined and
reported, never fatal) and the audit log's append. Every write goes through
``batchd.durable.write_durable``; nothing here follows a symlink: a link where
a state file or directory should be is an error. It decides nothing about
batches: what to write is the caller's.

The durable-file primitives that callers import from ``batchd.store``
(``write_durable``, ``ensure_dir``, ``StoreError`` ...) are re-exported here.

The calls are synchronous on purpose: one write costs well under a millisecond,
less than a hop to a worker thread, and the engine writes from one task.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import msgspec

from batchd import failpoints
from batchd.durable import (
    LockHeld,
    StoreError,
    ensure_dir,
    fsync_dir,
    read_nofollow,
    remove_temp_files,
    take_lock,
    write_durable,
)
from batchd.model import AuditEvent, BatchState, DaemonState, RetryState, UserState
from batchd.protocol import is_batch_id
from batchd.stateenc import StateEncoder

__all__ = [
    "AUDIT",
    "RETRY",
    "SOURCE",
    "STATE",
    "LockHeld",
    "Problem",
    "Store",
    "StoreError",
    "decode_file",
    "encode",
    "ensure_dir",
    "fsync_dir",
    "read_nofollow",
    "take_lock",
    "write_durable",
]

_encoder = msgspec.json.Encoder()
T = TypeVar("T")

STATE = "state.json"
RETRY = "retry_state.json"
AUDIT = "retry_audit.jsonl"
SOURCE = "source"


@dataclass
class Problem:
    """Something wrong that ``status`` reports under ``problems``."""

    kind: str
    message: str
    batch_id: str | None = None


def encode(obj: object) -> bytes:
    return _encoder.encode(obj)


def decode_file(path: Path, kind: type[T]) -> T:
    """Decode a state file; ``msgspec.DecodeError`` (a ValidationError too) when it is bad."""
    return msgspec.json.decode(read_nofollow(path), type=kind)


# --- the state directory ---------------------------------------------------------


class Store:
    """The state directory of one daemon: ``daemon.json``, ``user_state.json``, ``batches/``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir
        self.batches = state_dir / "batches"
        self._lock_fd: int | None = None
        self._encoder = StateEncoder()
        self.temp_files_removed = 0  # left by a killed daemon; removed at start

    def open(self) -> None:
        """Create the layout (0700) and take the single-instance lock."""
        ensure_dir(self.root)
        ensure_dir(self.batches)
        self.lock()
        self.temp_files_removed += remove_temp_files(self.root)

    def lock(self) -> None:
        try:
            self._lock_fd = take_lock(self.root / "batchd.lock", f"{os.getpid()}\n")
        except LockHeld as e:
            holder = e.content[:32].decode("ascii", "replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreError(
                f"another batchd{who} is already running on {self.root}; "
                "stop it first, or give this one another --state-dir"
            ) from None

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- small files ---

    def load_daemon(self) -> DaemonState:
        return self._load_small("daemon.json", DaemonState) or DaemonState()

    def save_daemon(self, state: DaemonState) -> None:
        write_durable(self.root, "daemon.json", encode(state))

    def load_user(self) -> UserState:
        return self._load_small("user_state.json", UserState) or UserState()

    def save_user(self, state: UserState) -> None:
        write_durable(self.root, "user_state.json", encode(state))

    def _load_small(self, name: str, kind: type[T]) -> T | None:
        path = self.root / name
        try:
            return decode_file(path, kind)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise StoreError(f"{path} is a symlink; batchd never follows links") from None
            raise StoreError(f"cannot read {path}: {e.strerror}") from None
        except msgspec.DecodeError:
            self.quarantine(path)
            return None

    def quarantine(self, path: Path) -> Path:
        """Move an unreadable state file aside as ``<name>.corrupt-<ts>``."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while dest.exists():
            dest = path.with_name(f"{path.name}.corrupt-{stamp}.{n}")
            n += 1
        os.rename(path, dest)
        fsync_dir(path.parent)
        return dest

    # --- batches ---

    def batch_dir(self, batch_id: str) -> Path:
        if not is_batch_id(batch_id):
            raise ValueError(f"not a batch id: {batch_id!r}")
        return self.batches / batch_id

    def log_path(self, batch_id: str, index: int, attempt: int) -> Path:
        return self.batch_dir(batch_id) / "logs" / f"{index}.{attempt}.log"

    def create_batch(self, state: BatchState, retry: RetryState) -> Path:
        """Write a new batch's directory and both state files durably."""
        bdir = self.batch_dir(state.batch_id)
        os.mkdir(bdir, 0o700)
        os.mkdir(bdir / "logs", 0o700)
        write_durable(bdir, RETRY, encode(retry))
        write_durable(bdir, STATE, encode(state))
        fsync_dir(self.batches)
        return bdir

    def save_state(self, state: BatchState) -> None:
        write_durable(self.batch_dir(state.batch_id), STATE, self._encoder.encode(state))

    def save_retry(self, retry: RetryState, data: bytes | None = None) -> None:
        """Write ``retry_state.json`` (``data``: its encoding, when the caller has it)."""
        write_durable(self.batch_dir(retry.batch_id), RETRY, data or encode(retry))

    def append_audit(self, batch_id: str, events: Iterable[AuditEvent]) -> None:
        """Append one JSON line per event, flushed to disk (0600)."""
        data = b"".join(encode(e) + b"\n" for e in events)
        if not data:
            return
        failpoints.check_write()
        path = self.batch_dir(batch_id) / AUDIT
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            os.write(fd, data)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def has_source(self, batch_id: str) -> bool:
        return os.path.lexists(self.batch_dir(batch_id) / SOURCE)

    def load_batches(self) -> tuple[list[tuple[BatchState, RetryState]], list[Problem]]:
        """Every readable batch; unreadable state files are quarantined and reported."""
        found: list[tuple[BatchState, RetryState]] = []
        problems: list[Problem] = []
        try:
            names = sorted(os.listdir(self.batches))
        except FileNotFoundError:
            return found, problems
        for name in names:
            if not is_batch_id(name):
                continue
            bdir = self.batches / name
            if not stat.S_ISDIR(os.lstat(bdir).st_mode):
                problems.append(Problem("bad_batch_dir", f"{bdir} is not a directory", name))
                continue
            self.temp_files_removed += remove_temp_files(bdir)
            loaded = self._load_one(bdir, name, problems)
            if loaded is not None:
                found.append(loaded)
        found.sort(key=lambda pair: pair[0].seq)
        return found, problems

    def _load_one(
        self, bdir: Path, batch_id: str, problems: list[Problem]
    ) -> tuple[BatchState, RetryState] | None:
        path = bdir / STATE
        try:
            state = decode_file(path, BatchState)
            if state.batch_id != batch_id:
                raise msgspec.ValidationError(f"batch_id {state.batch_id!r} != directory name")
        except FileNotFoundError:
            if not os.path.lexists(bdir / SOURCE):
                # Killed inside create_batch: nothing was accepted (the spool file is still
                # in the spool and becomes a batch again), so the half-made directory goes.
                shutil.rmtree(bdir, ignore_errors=True)
                return None
            problems.append(Problem("incomplete_batch", f"{bdir} has no {STATE}", batch_id))
            return None
        except (msgspec.DecodeError, StoreError, OSError) as e:
            problems.append(self._unreadable(path, e, "the batch is left out", batch_id))
            return None
        try:
            retry = decode_file(bdir / RETRY, RetryState)
        except FileNotFoundError:
            retry = RetryState(
                batch_id=batch_id, created_at=state.created_at, updated_at=state.updated_at
            )
        except (msgspec.DecodeError, StoreError, OSError) as e:
            what = "retry counters start again at 0"
            problems.append(self._unreadable(bdir / RETRY, e, what, batch_id))
            retry = RetryState(
                batch_id=batch_id, created_at=state.created_at, updated_at=state.updated_at
            )
        return state, retry

    def _unreadable(self, path: Path, error: Exception, effect: str, batch_id: str) -> Problem:
        """Quarantine an unreadable state file (never through a symlink) and describe it."""
        moved = ""
        if path.exists() and not path.is_symlink():
            moved = f"; moved to {self.quarantine(path).name}"
        return Problem(
            "corrupt_state", f"{path}: cannot be read ({error}){moved}; {effect}", batch_id
        )

    def remove_batch(self, batch_id: str) -> None:
        bdir = self.batch_dir(batch_id)
        if os.path.islink(bdir):
            raise StoreError(f"{bdir} is a symlink")
        shutil.rmtree(bdir)
        fsync_dir(self.batches)
        self._encoder.forget(batch_id)

    def move_in_source(self, src: Path, batch_id: str) -> None:
        """Move an accepted spool file to ``<batch dir>/source`` (copy across filesystems)."""
        dest = self.batch_dir(batch_id) / SOURCE
        try:
            os.rename(src, dest)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            data = read_nofollow(src)
            write_durable(dest.parent, SOURCE, data)
            os.unlink(src)
        os.chmod(dest, 0o600)  # a regular file: the spool checked it with lstat and fstat
        fsync_dir(dest.parent)
        fsync_dir(src.parent)
