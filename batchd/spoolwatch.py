"""The watch on the spool folder (watchfiles), started again when the folder is a new one.

Owns only "tell the spool that something changed": every change set pokes it,
and so does every start of the watch (what came while nothing watched). A
watch follows an inode, so a spool folder that was removed, replaced or
turned into a link is never seen again by the old watch (the old one reports
it "deleted", which pokes the spool): the spool's pass, which decides what the
spool folder is, says which one to watch (``follow``) and the watch starts
again on it; while there is no real folder to watch, it looks again every
``WATCH_RETRY_S``. Never reads a file, never raises out of ``run``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import anyio
from watchfiles import awatch

from batchd.spoolfs import Ident, ident, lstat_or_none
from batchd.spoolrules import folder_trouble

log = logging.getLogger("batchd.spool")
logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every change at INFO

# watchfiles' watcher thread wakes every ``step`` ms (it polls its stop event): 4 wakeups a
# second costs ~0.01% CPU when idle. ``batchctl submit`` pings the daemon, which scans at
# once, so a submitted batch does not wait for this.
WATCH_STEP_MS = 250
WATCH_RETRY_S = 1.0  # while the spool folder cannot be watched (gone, a link), look this often


class Watch:
    def __init__(self, folder: Path, poke: Callable[[], None]) -> None:
        self.folder = folder
        self.poke = poke
        self.watched: Ident | None = None  # the folder being watched now
        self._halt = anyio.Event()

    def follow(self, here: Ident) -> None:
        """The spool folder is ``here`` now: watch it, if that is not what is watched."""
        if self.watched != here:
            self._halt.set()

    def halt(self) -> None:
        self._halt.set()

    def _watchable(self) -> Ident | None:
        """The spool folder's identity when it can be watched (a real folder of ours)."""
        try:
            st = lstat_or_none(self.folder)
        except OSError:
            return None
        if st is None or folder_trouble("spool", "", st.st_mode, st.st_uid, os.getuid()):
            return None
        return ident(st)

    async def run(self, stop: anyio.Event) -> None:
        """Watch until ``stop`` (which must also call ``halt``)."""
        while not stop.is_set():
            halt = self._halt = anyio.Event()
            here = self._watchable()
            if here is None:
                with anyio.move_on_after(WATCH_RETRY_S):
                    await halt.wait()
                continue
            self.watched = here
            self.poke()  # what came while nothing watched
            try:
                await self._changes(halt)
            except (OSError, RuntimeError) as e:
                log.warning("spool: watching %s failed (%s); retrying", self.folder, e)
                with anyio.move_on_after(WATCH_RETRY_S):
                    await stop.wait()
            self.watched = None
            self.poke()

    async def _changes(self, halt: anyio.Event) -> None:
        changes = awatch(
            self.folder,
            watch_filter=None,
            recursive=False,
            stop_event=halt,
            step=WATCH_STEP_MS,
            debounce=1000,
            rust_timeout=1000,
        )
        async with contextlib.aclosing(changes):
            async for _changes in changes:
                self.poke()
