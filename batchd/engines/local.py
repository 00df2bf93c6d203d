"""The local engine: each attempt is a process group on this machine.

A local run cannot outlive the daemon usefully (its output pipes end with the
daemon), so after a restart there is nothing to re-attach to: a recorded
runner still alive is stopped (same pid, same start time), and so is any
process of this user whose environment carries a ``BATCHD_RUN_ID`` of this
state dir (a kill between the spawn and the pid write). The attempt then runs
again, uncharged.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio

from batchd import procfs
from batchd.engines import LaunchSpec, Run, RunRef
from batchd.engines.process import Launch, kill_group, spawn

if TYPE_CHECKING:
    from batchd.config import Config


class LocalEngine:
    name = "local"
    keeps_runs = False

    async def start(self, spec: LaunchSpec) -> Run:
        return spawn(
            Launch(
                argv=spec.argv,
                env=spec.env,
                cwd=spec.cwd,
                log_path=spec.log_path,
                timeout=spec.timeout,
                kill_grace=spec.kill_grace,
                max_log_bytes=spec.max_log_bytes,
                stall_timeout=spec.stall_timeout,
            )
        )

    async def reattach(self, ref: RunRef, spec: LaunchSpec) -> Run | None:
        """A local run cannot be re-attached: stop it if it still runs; None."""
        if ref.pid is not None and procfs.is_alive(ref.pid, ref.pid_start_time):
            with anyio.CancelScope(shield=True):
                await kill_group(ref.pid, spec.kill_grace)
        return None

    async def stop_orphans(self, run_id_prefix: str, known: set[str]) -> list[str]:
        """Stop every live process whose ``BATCHD_RUN_ID`` starts with the prefix."""
        stopped = []
        for pid in procfs.with_env(f"BATCHD_RUN_ID={run_id_prefix}".encode()):
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            with anyio.CancelScope(shield=True):
                if pgid == os.getpgid(0):  # in our own group: never signal the group
                    os.kill(pid, 9)
                else:
                    await kill_group(pgid, 5.0)
            stopped.append(f"process {pid} (group {pgid})")
        return stopped

    def reconfigure(self, cfg: Config) -> None:
        return None  # nothing of its own to configure

    async def aclose(self) -> None:
        return None
