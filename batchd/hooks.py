"""Hooks (SPEC 5): user commands run around features and batches, never fatal.

``before_feature`` and ``after_feature`` run in the feature's cwd with the
feature's environment (``after_feature`` also gets ``BATCHD_OUTCOME``);
``on_batch_done`` and ``on_breaker_open`` get the batch's counts. Each is an
argv rendered with the runner's placeholders (``{batch_id}``...; those a hook
has no value for are empty), run as a local process group with
``hooks.timeout``. A hook's failure is logged with its name and argv and
returned as text; what it means (a failed ``before_feature`` fails the
attempt as transient) is decided by the caller.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping

from batchd import template
from batchd.classify import RawResult, sanitize
from batchd.engines import SpawnError
from batchd.engines.process import Launch, Process, spawn

log = logging.getLogger("batchd")

PLACEHOLDERS = template.PLACEHOLDERS


class Hooks:
    """The hooks running now, so that a daemon stop can end them all."""

    def __init__(self) -> None:
        self._running: set[Process] = set()
        self._stopping = False

    def stop_all(self) -> None:
        """The daemon stops: end every running hook now (none may outlast TimeoutStopSec)."""
        self._stopping = True
        for proc in list(self._running):
            proc.stop("daemon stopping")

    async def run(
        self,
        name: str,
        argv: list[str],
        *,
        values: Mapping[str, str],
        env: dict[str, str],
        cwd: str,
        timeout: float,
        kill_grace: float,
    ) -> str | None:
        """Run hook ``name``; None when it succeeded (or there is none), else why it failed."""
        if not argv:
            return None
        rendered = template.render(argv, {k: values.get(k, "") for k in PLACEHOLDERS})
        what = f"hook {name} ({sanitize(shlex.join(rendered), 300)})"
        launch = Launch(
            argv=rendered,
            env=env,
            cwd=cwd if os.path.isdir(cwd) else os.path.expanduser("~"),
            log_path=None,
            timeout=timeout,
            kill_grace=kill_grace,
            tail_caps=(4096, 4096),
            what=f"hook {name}",
        )
        try:
            raw = await self._run_to_end(launch)
        except SpawnError as e:
            log.error("%s: %s", what, e.message)
            return e.message
        if raw.interrupted:
            log.warning("%s: stopped because the daemon is stopping", what)
            return "stopped because the daemon is stopping"
        if raw.exit_code == 0:
            log.debug("%s: ok", what)
            return None
        message = _failure(raw, timeout)
        log.error("%s failed: %s", what, message)
        return message

    async def _run_to_end(self, launch: Launch) -> RawResult:
        """Start the hook and wait for its end; ``stop_all`` ends it (even one starting now)."""
        proc = spawn(launch)
        self._running.add(proc)
        if self._stopping:
            proc.stop("daemon stopping")
        try:
            return await proc.wait()
        finally:
            self._running.discard(proc)


def _failure(raw: RawResult, timeout: float) -> str:
    """Why a hook failed, with the end of what it wrote to stderr."""
    if raw.timed_out:
        why = f"timed out after {timeout:g} s (hooks.timeout)"
    elif raw.exit_code is None:
        why = f"killed by signal {raw.signal}"
    else:
        why = f"exit code {raw.exit_code}"
    detail = sanitize(raw.stderr_tail.decode("utf-8", "replace").strip(), 300)
    return f"{why}: {detail}" if detail else why
