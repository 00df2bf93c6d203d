"""The spool directory (SPEC section 3): settling, claiming, rejecting, looking again.

Owns everything between "a name appeared in the spool" and "here is a claimed,
validated file": ``lstat`` before anything, when to claim an entry (only a claim
that succeeded becomes a batch) and when to move a refused one to ``rejected/``.
The moves themselves (atomic renames made durable, the ``.error`` sidecar) are
``spoolmove``'s. The rules (when a file is ready, what a folder in trouble
stops, which rejected files status shows) are ``spoolrules``'; reading an
entry, the lock and the look at the spool's own folders are ``spoolfs``';
turning a claimed file into a batch is ``intake``'s; whether bytes are
acceptable is ``parse``'s; the watch that says when to look is ``spoolwatch``'s.

Never an exception out of the watch: trouble with the spool's own folders (a
link, a plain file, unwritable, the spool folder removed or replaced) is a
``spool`` problem handed to ``on_change``, logged once, and looked at again
every ``TROUBLE_RETRY_S``; nothing is written through a link and a file that
cannot move stays where it is. A pass over the spool yields to the event loop
between files at least every ``TURN_S``, so the control socket answers during
a burst of files.

A kill between the claim and the batch leaves the file in ``.claimed/``; every
pass handles such leftovers first, so it becomes exactly one batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel

from batchd.clock import Clock, SystemClock
from batchd.parse import Limits, ParsedBatch, ParseError, is_request_name, parse_spool_file
from batchd.spoolfs import (
    Refused,
    SpoolLock,
    check_folder,
    ident,
    list_rejected,
    lstat_or_none,
    read_entry,
)
from batchd.spoolfs import SpoolError as SpoolError  # what the daemon catches at start
from batchd.spoolmove import claim, reject
from batchd.spoolnames import CLAIMED, REJECTED, is_ignored
from batchd.spoolrules import (
    DirSig,
    FirstLook,
    Role,
    SpoolReport,
    entry_kind,
    needs_relist,
    next_look,
    request_look,
    settle_due,
    trouble_message,
)
from batchd.spoolwatch import Watch
from batchd.store import StoreError, fsync_dir

__all__ = ["Accepted", "Spool", "SpoolError", "SpoolLock"]

log = logging.getLogger("batchd.spool")

Troubles = dict[Role, str]
TURN_S = 0.02  # the longest a pass keeps the event loop (plus one file's work)


@dataclass(frozen=True)
class Accepted:
    """A claimed spool file that passed validation: the engine turns it into a batch."""

    name: str
    path: Path  # in .claimed/
    sha256: str
    parsed: ParsedBatch


Ingest = Callable[[Accepted], None]
Vet = Callable[[str, ParsedBatch], str | None]  # why a parsed file is refused (None: accepted)
OnChange = Callable[[str | None], None]  # the spool problem's text (None: none) after a change


class Spool:
    def __init__(
        self,
        spool_dir: Path,
        limits: Limits,
        settle_ms: int,
        ingest: Ingest,
        *,
        clock: Clock | None = None,
        lock: SpoolLock | None = None,
        report: SpoolReport | None = None,
        on_change: OnChange | None = None,
        vet: Vet | None = None,
    ) -> None:
        """``lock``: this daemon's lock on the spool, taken again if the folder is replaced;
        ``report``: kept current for ``status`` (rejected files); ``on_change``: told when the
        spool's problem or its report changed; ``vet``: what the daemon refuses of a file
        that parses (a worktree batch outside a git work tree, SPEC 15)."""
        self.dir = spool_dir
        self.claimed = spool_dir / CLAIMED
        self.rejected = spool_dir / REJECTED
        self.folders: dict[Role, Path] = {"claimed": self.claimed, "rejected": self.rejected}
        self.limits = limits
        self.settle_s = settle_ms / 1000.0
        self.ingest = ingest
        self.clock: Clock = clock or SystemClock()
        self.lock = lock
        self.report = report if report is not None else SpoolReport()
        self.on_change: OnChange = on_change or (lambda _trouble: None)
        self.vet: Vet = vet or (lambda _name, _parsed: None)
        self.troubles: Troubles = {}
        self._looks: dict[str, FirstLook] = {}  # .json requests waiting for their second look
        self._due: float | None = None
        self._poke = anyio.Event()
        self.watch = Watch(spool_dir, self.poke)
        self._rejected_sig: DirSig | None = None
        self._listed_at = 0.0
        self._rejected_dirty = True

    def reconfigure(self, limits: Limits, settle_ms: int) -> None:
        self.limits = limits
        self.settle_s = settle_ms / 1000.0

    # --- one pass ---

    def scan(self, now: float | None = None) -> float | None:
        """One whole pass at once; the wall time of the next look a file needs, if any."""
        for _ in self._pass(self.clock.now() if now is None else now):
            pass
        return self._due

    async def _scan_yielding(self) -> float | None:
        """One pass that lets the other tasks (the control socket) run at least every
        ``TURN_S`` of work, between two files (each turn of the engine's loop plans over every
        batch: after every file, a burst would cost it quadratic time)."""
        try:
            turn = anyio.current_time()
            for _ in self._pass(self.clock.now()):
                if anyio.current_time() - turn >= TURN_S:
                    await anyio.lowlevel.checkpoint()
                    turn = anyio.current_time()
        except (OSError, StoreError) as e:  # a trouble no check foresaw: never an exit
            self._set_troubles({"spool": f"{self.dir}: {e}; batchd tries again"})
            return None
        return self._due

    def _pass(self, now: float) -> Iterator[None]:
        troubles: Troubles = {}
        self._due = None
        yield from self._look(now, troubles)
        self._refresh_rejected(now, troubles)
        self._set_troubles(troubles)

    def _look(self, now: float, troubles: Troubles) -> Iterator[None]:
        if not self._spool_usable(troubles):
            return
        for role, path in self.folders.items():
            trouble, _ = check_folder(role, path)
            if trouble is not None:
                troubles[role] = trouble
        try:
            with os.scandir(self.dir) as it:
                entries = [e for e in it if not is_ignored(e.name)]
        except OSError as e:
            troubles["spool"] = f"{self.dir} cannot be listed: {e.strerror}; batchd tries again"
            return
        if "claimed" not in troubles:
            yield from self._finish_claims(troubles)
        candidates: list[tuple[int, str, os.stat_result]] = []
        for entry in entries:
            with contextlib.suppress(OSError):  # gone since the listing
                st = entry.stat(follow_symlinks=False)
                candidates.append((st.st_mtime_ns, entry.name, st))
        candidates.sort()
        for _, name, st in candidates:
            due = self._consider(name, st, now, troubles)
            if due is not None:
                self._due = due if self._due is None else min(self._due, due)
            yield
        seen = {name for _, name, _ in candidates}
        self._looks = {n: look for n, look in self._looks.items() if n in seen}

    def _spool_usable(self, troubles: Troubles) -> bool:
        """The spool folder is a real folder of ours, locked by us (taken again when it was
        replaced), and watched; else its trouble is noted and nothing is read."""
        try:
            was_there = lstat_or_none(self.dir) is not None
        except OSError:
            was_there = True
        trouble, st = check_folder("spool", self.dir)
        if trouble is not None or st is None:
            troubles["spool"] = trouble or f"{self.dir} cannot be used; batchd tries again"
            return False
        if not was_there:
            log.warning("spool: the spool folder %s was removed; created it again", self.dir)
        here = ident(st)
        if self.lock is not None and self.lock.folder != here:
            try:
                self.lock.retake()
            except SpoolError as e:
                troubles["spool"] = f"the spool folder {self.dir} was replaced: {e}"
                return False
            log.warning("spool: the spool folder %s is a new one; it is owned again", self.dir)
        self.watch.follow(here)  # a new folder: the old watch sees nothing of it
        return True

    def _consider(
        self, name: str, st: os.stat_result, now: float, troubles: Troubles
    ) -> float | None:
        why = entry_kind(st.st_mode)
        if why is not None:
            self._reject(name, f"{name} {why}", self.dir, troubles)
            return None
        if is_request_name(name):
            due = self._request_due(name, st, now)
        else:
            due = settle_due(max(st.st_mtime, st.st_ctime), now, self.settle_s)
        if due is not None:
            return due
        if "claimed" not in troubles and self._claim(name, st, troubles):
            self._accept_claimed(name, troubles)
        return None

    def _request_due(self, name: str, st: os.stat_result, now: float) -> float | None:
        """A ``.json`` request that does not parse yet gets one more look (``request_look``)."""
        try:
            parse_spool_file(
                name, read_entry(self.dir / name, st, self.limits.max_file_bytes), self.limits
            )
            parses = True
        except (OSError, Refused):
            return None  # gone, or refused: the claimed copy says why
        except ParseError:
            parses = False
        due, look = request_look(
            parses,
            (st.st_size, st.st_mtime_ns, st.st_ino),
            now,
            self.settle_s,
            self._looks.get(name),
        )
        if look is None:
            self._looks.pop(name, None)
        else:
            self._looks[name] = look
        return due

    def _claim(self, name: str, st: os.stat_result, troubles: Troubles) -> bool:
        claimed, trouble = claim(self.dir, self.claimed, name, st)
        if trouble is not None:
            troubles["claimed"] = trouble
        return claimed

    def _finish_claims(self, troubles: Troubles) -> Iterator[None]:
        """Turn claimed files into batches: leftovers of a kill, or of a failed batch write."""
        try:
            names = sorted(os.listdir(self.claimed))
            if names:  # a claim cut short may not be durable yet
                fsync_dir(self.dir)
                fsync_dir(self.claimed)
        except OSError:
            return  # checked a moment ago: looked at again at the next pass
        for name in names:
            self._accept_claimed(name, troubles)
            yield

    def _accept_claimed(self, name: str, troubles: Troubles) -> None:
        path = self.claimed / name
        try:
            st = os.lstat(path)
            why = entry_kind(st.st_mode)
            if why is not None:
                raise Refused(f"{name} {why}")
            data = read_entry(path, st, self.limits.max_file_bytes)
            parsed = parse_spool_file(name, data, self.limits)
        except FileNotFoundError:
            return
        except (Refused, ParseError) as e:
            self._reject(name, str(e), self.claimed, troubles)
            return
        why = self.vet(name, parsed)
        if why is not None:
            self._reject(name, why, self.claimed, troubles)
            return
        sha = hashlib.sha256(data).hexdigest()
        self.ingest(Accepted(name=name, path=path, sha256=sha, parsed=parsed))

    def _reject(self, name: str, reason: str, source: Path, troubles: Troubles) -> None:
        """Move ``name`` (from ``source``) to ``rejected/``; while ``rejected/`` is in trouble
        it stays where it is."""
        if "rejected" in troubles:
            return
        moved, trouble = reject(source, self.rejected, name, reason)
        if trouble is not None:
            troubles["rejected"] = trouble
        self._rejected_dirty = self._rejected_dirty or moved

    # --- what status shows ---

    def _refresh_rejected(self, now: float, troubles: Troubles) -> None:
        """List ``rejected/`` again when it changed (or the last listing may have missed a
        change): status reads the list from memory."""
        try:
            st = lstat_or_none(self.rejected)
        except OSError:
            return
        usable = st is not None and "rejected" not in troubles and "spool" not in troubles
        sig = (st.st_dev, st.st_ino, st.st_mtime_ns) if st is not None and usable else None
        if not self._rejected_dirty and not needs_relist(self._rejected_sig, sig, self._listed_at):
            return
        try:
            total, items = list_rejected(self.rejected) if sig is not None else (0, [])
        except OSError:
            return
        self._rejected_sig, self._listed_at, self._rejected_dirty = sig, now, False
        if (total, items) != (self.report.rejected_total, self.report.rejected):
            self.report.rejected_total, self.report.rejected = total, items
            self.on_change(trouble_message(troubles))

    def _set_troubles(self, troubles: Troubles) -> None:
        """Log what went wrong (once) and what is usable again; tell ``on_change``."""
        if troubles == self.troubles:
            return
        for role, text in troubles.items():
            if self.troubles.get(role) != text:
                log.error("spool: %s", text)
        for role in self.troubles.keys() - troubles.keys():
            log.info("spool: the trouble with the %s folder is over", role)
        self.troubles = troubles
        self.on_change(trouble_message(troubles))

    # --- watching ---

    async def run(self, stop: anyio.Event) -> None:
        """Look now, then after every change set, at every settle deadline, every
        ``TROUBLE_RETRY_S`` while in trouble, and at least every ``IDLE_LOOK_S``."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.watch.run, stop)
            tg.start_soon(self._wake_at, stop)
            while not stop.is_set():
                poke = self._poke
                due = await self._scan_yielding()
                await self.clock.sleep_until(
                    next_look(due, self.clock.now(), bool(self.troubles)), poke
                )
            tg.cancel_scope.cancel()

    async def _wake_at(self, stop: anyio.Event) -> None:
        await stop.wait()
        self.poke()
        self.watch.halt()

    def poke(self) -> None:
        self._poke.set()
        self._poke = anyio.Event()
