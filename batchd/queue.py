"""The queue's own state (``daemon.json``) and what environment trouble does to it. Pure.

A queue pause stops every batch from starting features. It is set by the
user (``pause`` with no batch id) or by trouble that is not any feature's
fault: a runner that cannot be started, a cluster that refuses jobs. Such a
pause is lifted by itself when the configuration is reloaded or the daemon
restarts (that usually follows a fix; if not, the next start pauses again).
A missing batch cwd pauses only that batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from batchd.model import DaemonState, utc_iso

PAUSE_USER = "user"
PAUSE_RUNNER = "runner_unavailable"
PAUSE_SUBMIT = "submit_failed"
PAUSE_CWD = "cwd_unavailable"
PAUSE_WRITE = "state_write_failed"  # never stored: the state cannot be written

_LIFTED_BY_RELOAD = (PAUSE_RUNNER, PAUSE_SUBMIT)


@dataclass(frozen=True)
class Trouble:
    """What to pause, and why, when an attempt cannot be started."""

    scope: Literal["batch", "queue"]
    reason: str


def pause(q: DaemonState, reason: str, now: float) -> None:
    q.queue_paused = True
    q.pause_reason = reason
    q.updated_at = utc_iso(now)


def resume(q: DaemonState, now: float) -> bool:
    """Lift a queue pause; False when the queue was not paused."""
    if not q.queue_paused:
        return False
    q.queue_paused = False
    q.pause_reason = None
    q.updated_at = utc_iso(now)
    return True


def lift_trouble_pause(q: DaemonState, now: float) -> bool:
    """On reload or restart: lift a pause caused by runner or cluster trouble."""
    if q.queue_paused and (q.pause_reason or "").startswith(_LIFTED_BY_RELOAD):
        return resume(q, now)
    return False


def spawn_trouble(
    kind: Literal["cwd", "runner", "submit"],
    message: str,
    *,
    batch_id: str,
    batch_has_cwd: bool,
    config_path: str,
) -> Trouble:
    """Where trouble starting an attempt pauses, with a reason that says how to fix it."""
    if kind == "cwd" and batch_has_cwd:
        return Trouble(
            "batch",
            f"{PAUSE_CWD}: {message}; create it (or submit the batch again with another "
            f"--cwd), then run 'batchctl resume {batch_id}'",
        )
    if kind == "submit":
        return Trouble(
            "queue",
            f"{PAUSE_SUBMIT}: {message}; fix the cluster or slurm.sbatch_args in "
            f"{config_path}, then reload ('systemctl --user reload batchd' or "
            "'batchctl reload') or run 'batchctl resume --all'",
        )
    where = "runner.cwd" if kind == "cwd" else "runner.command"
    return Trouble(
        "queue",
        f"{PAUSE_RUNNER}: {message}; fix {where} in {config_path} (or the PATH in the "
        "daemon's environment), then reload ('systemctl --user reload batchd' or "
        "'batchctl reload') or run 'batchctl resume --all'",
    )
