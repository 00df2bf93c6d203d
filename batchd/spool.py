"""The spool directory (SPEC section 3): owning, watching, settling, claiming, rejecting.

Owns everything between "a name appeared in the spool" and "here is a claimed,
validated file": the lock that makes one daemon the owner of a spool, ignore
rules, the settle time of plain files, the one re-try of a ``.json`` request,
``lstat`` before anything, opening with ``O_NOFOLLOW | O_NONBLOCK`` (never
block on a FIFO, never follow a link), the claim (an atomic rename into
``.claimed/``: only a claim that succeeded becomes a batch), and moving refused
entries to ``rejected/`` with a ``.error`` sidecar. Turning a claimed file into
a batch is the engine's (``Engine.ingest``); deciding whether bytes are
acceptable is ``parse``'s.

A kill between the claim and the batch leaves the file in ``.claimed/``; every
scan handles such leftovers first, so it becomes exactly one batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from watchfiles import awatch

from batchd import failpoints
from batchd.classify import sanitize
from batchd.parse import Limits, ParsedBatch, ParseError, is_request_name, parse_spool_file
from batchd.spoolnames import CLAIMED, LOCK, REJECTED, is_ignored
from batchd.store import LockHeld, StoreError, ensure_dir, fsync_dir, take_lock, write_durable

log = logging.getLogger("batchd.spool")
logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every change at INFO

# watchfiles' watcher thread wakes every ``step`` ms (it polls its stop event): 4 wakeups a
# second costs ~0.01% CPU when idle. ``batchctl submit`` pings the daemon, which scans at
# once, so a submitted batch does not wait for this.
WATCH_STEP_MS = 250
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _kind(mode: int) -> str | None:
    """Why a non-regular entry is refused, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "is a symbolic link; batchd never follows links in the spool: copy the file in"
    if stat.S_ISDIR(mode):
        return "is a directory; the spool is not recursive: put feature files directly in it"
    if stat.S_ISFIFO(mode):
        return "is a FIFO; only regular files are read"
    if stat.S_ISSOCK(mode):
        return "is a socket; only regular files are read"
    return "is a device or special file; only regular files are read"


class SpoolError(Exception):
    """The spool cannot be used by this daemon (another one owns it, or it is unusable)."""


class SpoolLock:
    """One daemon owns a spool: an ``flock`` on ``spool_dir/.batchd.lock``.

    The file says who holds it (pid and state dir), so that a second daemon can
    say which one it collided with. The lock goes with the process (a kill
    leaves a file that the next ``flock`` simply takes).
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, spool_dir: Path, state_dir: Path) -> SpoolLock:
        ensure_dir(spool_dir)
        path = spool_dir / LOCK
        me = json.dumps({"pid": os.getpid(), "state_dir": str(state_dir)}) + "\n"
        try:
            fd = take_lock(path, me)
        except StoreError as e:
            raise SpoolError(str(e)) from None
        except LockHeld as e:
            raise SpoolError(
                f"the spool {spool_dir} is already owned by another batchd{_holder(e.content)}; "
                "one spool has one daemon: stop that one, or give this one its own --spool"
            ) from None
        return cls(fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _holder(raw: bytes) -> str:
    """`` (pid N, state dir D)`` from a lock file's content, or nothing when unreadable."""
    try:
        info = json.loads(raw)
        return f" (pid {int(info['pid'])}, state dir {sanitize(str(info['state_dir']))})"
    except (ValueError, KeyError, TypeError):
        return ""


@dataclass(frozen=True)
class Accepted:
    """A claimed spool file that passed validation: the engine turns it into a batch."""

    name: str
    path: Path  # in .claimed/
    sha256: str
    parsed: ParsedBatch


Ingest = Callable[[Accepted], None]


class Spool:
    def __init__(self, spool_dir: Path, limits: Limits, settle_ms: int, ingest: Ingest) -> None:
        self.dir = spool_dir
        self.limits = limits
        self.settle_s = settle_ms / 1000.0
        self.ingest = ingest
        self._json_retry: dict[str, tuple[tuple[int, int, int], float]] = {}
        self._poke = anyio.Event()
        self.claimed = spool_dir / CLAIMED

    def reconfigure(self, limits: Limits, settle_ms: int) -> None:
        self.limits = limits
        self.settle_s = settle_ms / 1000.0

    # --- one scan ---

    def scan(self, now: float | None = None) -> float | None:
        """Read every ready entry; return the wall time of the next needed look, if any."""
        now = time.time() if now is None else now
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            ensure_dir(self.dir)
            return None
        self._finish_claims()
        candidates: list[tuple[int, str, os.stat_result]] = []
        for entry in entries:
            if is_ignored(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            candidates.append((st.st_mtime_ns, entry.name, st))
        candidates.sort()
        next_look: float | None = None
        seen = set()
        for _, name, st in candidates:
            seen.add(name)
            due = self._consider(name, st, now)
            if due is not None:
                next_look = due if next_look is None else min(next_look, due)
        for name in list(self._json_retry):
            if name not in seen:
                del self._json_retry[name]
        return next_look

    def _consider(self, name: str, st: os.stat_result, now: float) -> float | None:
        path = self.dir / name
        why = _kind(st.st_mode)
        if why is not None:
            self.reject(name, f"{name} {why}")
            return None
        if is_request_name(name):
            due = self._request_due(name, path, st, now)
            if due is not None:
                return due
        else:
            changed = max(st.st_mtime, st.st_ctime)
            if now - changed < self.settle_s:
                return changed + self.settle_s
        if self._claim(name):
            self._accept_claimed(name)
        return None

    def _request_due(self, name: str, path: Path, st: os.stat_result, now: float) -> float | None:
        """A ``.json`` request that does not parse yet gets one more look after ``settle_ms``.

        Returns when to look again, or None when it is ready to be claimed
        (it parses, or its second chance is over and it will be rejected).
        """
        try:
            parse_spool_file(name, self._read(path, st), self.limits)
        except (FileNotFoundError, _Refused):
            return None  # gone, or refused: the claimed copy says why
        except ParseError:
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            first = self._json_retry.get(name)
            if first is None or first[0] != sig:
                # A request is written by rename, but give a slow writer one more chance.
                self._json_retry[name] = (sig, now + self.settle_s)
                return now + self.settle_s
            if now < first[1]:
                return first[1]
        self._json_retry.pop(name, None)
        return None

    def _claim(self, name: str) -> bool:
        """Take ``name`` out of the spool into ``.claimed/`` by one rename; False if not ours."""
        target = self.claimed / name
        if os.path.lexists(target):
            return False  # an earlier claim of that name still waits for its batch
        failpoints.hit("before_claim")
        ensure_dir(self.claimed)
        try:
            os.rename(self.dir / name, target)
        except FileNotFoundError:
            log.info("spool: %s was taken by someone else before it was claimed", sanitize(name))
            return False
        fsync_dir(self.dir)
        fsync_dir(self.claimed)
        failpoints.hit("after_claim")
        return True

    def _finish_claims(self) -> None:
        """Turn claimed files into batches: leftovers of a kill, or of a failed batch write."""
        try:
            names = sorted(os.listdir(self.claimed))
        except FileNotFoundError:
            return
        for name in names:
            self._accept_claimed(name)

    def _accept_claimed(self, name: str) -> None:
        path = self.claimed / name
        try:
            st = os.lstat(path)
            why = _kind(st.st_mode)
            if why is not None:
                raise _Refused(f"{name} {why}")
            data = self._read(path, st)
            if len(data) > self.limits.max_file_bytes:
                raise _Refused(
                    f"{name}: file is over spool.max_file_bytes ({self.limits.max_file_bytes}); "
                    "split it into smaller files or raise the limit"
                )
            parsed = parse_spool_file(name, data, self.limits)
        except FileNotFoundError:
            return
        except (_Refused, ParseError) as e:
            self.reject(name, str(e), source=self.claimed)
            return
        sha = hashlib.sha256(data).hexdigest()
        self.ingest(Accepted(name=name, path=path, sha256=sha, parsed=parsed))

    def _read(self, path: Path, st: os.stat_result) -> bytes:
        try:
            fd = os.open(path, _O_READ)
        except OSError as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise _Refused(f"{path.name}: cannot be opened: {e.strerror}") from None
        try:
            fst = os.fstat(fd)
            if not stat.S_ISREG(fst.st_mode) or fst.st_ino != st.st_ino:
                raise _Refused(f"{path.name}: changed into something else while being read")
            limit = self.limits.max_file_bytes + 1
            chunks: list[bytes] = []
            size = 0
            while size < limit:
                chunk = os.read(fd, min(limit - size, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def reject(self, name: str, reason: str, source: Path | None = None) -> None:
        """Move ``name`` (from the spool, or ``source``) to ``rejected/`` with a ``.error``
        sidecar, without opening it."""
        reason = sanitize(reason)  # a file name or line may carry escapes or newlines
        rejected = self.dir / REJECTED
        ensure_dir(rejected)
        dest = name
        n = 1
        while os.path.lexists(rejected / dest) or os.path.lexists(rejected / f"{dest}.error"):
            dest = f"{name}.{n}"
            n += 1
        src = source if source is not None else self.dir
        try:
            os.rename(src / name, rejected / dest)
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("spool: cannot move %s to %s: %s", sanitize(name), rejected, e.strerror)
            return
        try:
            write_durable(rejected, f"{dest}.error", (reason + "\n").encode())
            fsync_dir(src)
        except OSError as e:
            log.error("spool: cannot write %s.error: %s", sanitize(dest), e)
        log.warning("spool: rejected %s (moved to %s/)", reason, rejected)

    # --- watching ---

    async def run(self, stop: anyio.Event) -> None:
        """Scan now, then after every change set and whenever a settle time ends."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch, stop)
            while not stop.is_set():
                poke = self._poke
                try:
                    due = self.scan()
                except OSError as e:
                    log.error("spool: cannot scan %s: %s; trying again in 5 s", self.dir, e)
                    due = time.time() + 5
                timeout = max(0.0, due - time.time()) if due is not None else None
                with anyio.move_on_after(timeout if timeout is not None else float("inf")):
                    async with anyio.create_task_group() as waiters:

                        async def on_stop() -> None:
                            await stop.wait()
                            waiters.cancel_scope.cancel()

                        waiters.start_soon(on_stop)
                        await poke.wait()
                        waiters.cancel_scope.cancel()
            tg.cancel_scope.cancel()

    def poke(self) -> None:
        self._poke.set()
        self._poke = anyio.Event()

    async def _watch(self, stop: anyio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                ensure_dir(self.dir)
            try:
                async for _changes in awatch(
                    self.dir,
                    watch_filter=None,
                    recursive=False,
                    stop_event=stop,
                    step=WATCH_STEP_MS,
                    debounce=1000,
                    rust_timeout=1000,
                ):
                    self.poke()
                    if not self.dir.is_dir():
                        break  # deleted: awatch would see nothing more; start again
            except (FileNotFoundError, RuntimeError) as e:
                log.warning("spool: watching %s failed (%s); retrying", self.dir, e)
            if not stop.is_set():
                self.poke()
                with anyio.move_on_after(1.0):
                    await stop.wait()


class _Refused(Exception):
    pass
