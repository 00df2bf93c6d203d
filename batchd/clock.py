"""Time, injected: the engine asks a ``Clock`` for the wall time and to sleep until a moment.

``SystemClock`` is the real one. Tests pass a clock whose time they move by
hand, so retry waits and breaker cooldowns take no real time. Runner
timeouts are real time inside the engines and do not go through the clock.
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
        delay = math.inf if when is None else max(0.0, when - time.time())
        with anyio.move_on_after(delay):
            await wake.wait()
