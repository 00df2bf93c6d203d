"""What in the morning report needs a person (SPEC 14), and what to run about it. Pure.

Owns the "Needs you" part of a report: which features failed, which pauses hold
(the queue's or a batch's) with a hint in words and the ``batchctl`` command that
lifts each, the usage-limit waits and the command that clears each, the open
breakers. It is given the report's batch items (``report`` builds them) and the
queue's state; never a file, a clock, or a change to what it is given.
"""

from __future__ import annotations

from collections.abc import Iterable

from batchd import reportshapes
from batchd.model import FINISHED, DaemonState, RetryState


def needs_attention(
    batches: Iterable[tuple[reportshapes.ReportBatch, RetryState]], queue: DaemonState
) -> reportshapes.ReportAttention:
    """What needs a person, from the report's batches (with their retry states) and the
    queue: failed features, pauses and the command that lifts each, usage-limit waits
    and the command that clears each, open breakers of unfinished batches."""
    paused: list[reportshapes.ReportPause] = []
    if queue.queue_paused:
        reason = queue.pause_reason or "user"
        paused.append(
            {
                "batch_id": None,
                "seq": None,
                "name": None,
                "reason": reason,
                "hint": _hint(reason),
                "command": "batchctl resume --all",
            }
        )
    failed: list[reportshapes.ReportFailure] = []
    breakers: list[reportshapes.ReportBreaker] = []
    for b, retry in batches:
        failed += [_failure(b, f) for f in b["features"] if f["outcome"] == "failed"]
        if b["status"] == "paused":
            paused.append(_pause(b))
        elif retry.circuit_breaker_open and b["status"] not in FINISHED:
            breakers.append(
                {
                    "batch_id": b["batch_id"],
                    "seq": b["seq"],
                    "name": b["name"],
                    "consecutive_failures": retry.consecutive_failures,
                    "opened_at": retry.breaker_opened_at,
                    "command": f"batchctl reset-breaker {b['batch_id']}",
                }
            )
    waits: list[reportshapes.ReportLimitWait] = [
        {
            "runner": runner,
            "until": w.until,
            "since": w.since,
            "message": w.message,
            "command": f"batchctl limit --clear {runner}",
        }
        for runner, w in sorted(queue.limit_waits.items())
    ]
    return {"failed": failed, "paused": paused, "limit_waits": waits, "breakers": breakers}


def _failure(
    b: reportshapes.ReportBatch, f: reportshapes.ReportFeature
) -> reportshapes.ReportFailure:
    return {
        "batch_id": b["batch_id"],
        "seq": b["seq"],
        "name": b["name"],
        "index": f["index"],
        "feature": f["feature"],
        "reason": f["error"] or "failed",
        "attempts": f["attempts"],
        "log_path": f["log_path"],
        "session_id": f["session_id"],
    }


def _pause(b: reportshapes.ReportBatch) -> reportshapes.ReportPause:
    reason = b["pause_reason"] or "user"
    batch_id = b["batch_id"]
    verb = "reset-breaker" if _code(reason) == "breaker" else "resume"
    return {
        "batch_id": batch_id,
        "seq": b["seq"],
        "name": b["name"],
        "reason": reason,
        "hint": _hint(reason),
        "command": f"batchctl {verb} {batch_id}",
    }


def _code(reason: str) -> str:
    """The reason code of a pause reason (``cwd_unavailable: working directory ...``)."""
    return reason.split(":", 1)[0].strip()


_HINTS = {
    "user": "paused by you",
    "breaker": (
        "the circuit breaker opened after failures in a row: look at the failures first; "
        "resetting it resumes the batch"
    ),
    "cost_limit": (
        "its cost reached limits.max_cost_usd: raise the limit in the config and run "
        "'batchctl reload' first, or it pauses again at once"
    ),
    "agent_login": (
        "the agent is not logged in: log in as the user the daemon runs as "
        "(or put the API key in the unit's EnvironmentFile)"
    ),
    "usage_limit": "the agent's usage limit resets later than limits.max_limit_wait",
    "runner_unavailable": "its runner profile is not in the config: add it back and reload",
}


def _hint(reason: str) -> str:
    """What to do before the command; empty when the reason says it itself."""
    return _HINTS.get(_code(reason), "")
