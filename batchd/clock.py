"""Time, injected: the engine asks a ``Clock`` for the wall time and to sleep until a moment.

``SystemClock`` is the real one. Tests pass a clock whose time they move by
hand, so retry waits and breaker cooldowns take no real time.
``MonotonicClock`` is the same on a clock that never jumps: for deadlines
that nothing records (the Slurm engine's timeouts, kill grace and polls).
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, epoch seconds (what state files record)."""
        ...

    async def sleep_until(self, when: float | None, wake: anyio.Event) -> None:
        """Return at ``when`` (None: never), or as soon as ``wake`` is set."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float | None, wake: anyio.Event) -> None:
        delay = math.inf if when is None else max(0.0, when - self.now())
        with anyio.move_on_after(delay):
            await wake.wait()


class MonotonicClock(SystemClock):
    """Seconds since an arbitrary moment, never set back: never for what state files record."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told (``advance``): for tests of waits and cooldowns.

    ``sleepers`` lists the moments someone sleeps until, so a test can wait for
    the positive sign that the engine is asleep until a given time.
    """

    def __init__(self, start: float) -> None:
        self.t = start
        self._sleepers: list[tuple[float, anyio.Event]] = []

    def now(self) -> float:
        return self.t

    @property
    def sleepers(self) -> list[float]:
        return sorted(when for when, _ in self._sleepers)

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for when, ev in list(self._sleepers):
            if when <= self.t:
                ev.set()

    async def sleep_until(self, when: float | None, wake: anyio.Event) -> None:
        if when is None:
            await wake.wait()
            return
        if when <= self.t:
            return
        due = anyio.Event()
        entry = (when, due)
        self._sleepers.append(entry)
        try:
            async with anyio.create_task_group() as tg:

                async def on(ev: anyio.Event) -> None:
                    await ev.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(on, wake)
                tg.start_soon(on, due)
        finally:
            self._sleepers.remove(entry)
