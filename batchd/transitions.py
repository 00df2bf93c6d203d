"""The batch's status machine: every status change in one table. Pure.

As h11 keeps its connection states: the events, the statuses, and one table
``TRANSITIONS`` (event -> {from status: to status}). Every entry has its
target; an event that does not apply to a status is not in that event's
row, and ``move`` refuses it with ``BadState`` naming what the user tried.
Which event happens (``resume`` or ``resume_unstarted``, ``complete`` or
``fail``) is decided by ``Batch`` from its features; where it leads is only
decided here.

Also here: the parts of the configuration a transition depends on
(``Settings``) and what the engine must carry out after an outcome (``Step``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from batchd import policy
from batchd.errors import BadState
from batchd.model import AuditEvent, BatchState, BatchStatus, utc_iso

if TYPE_CHECKING:
    from batchd.config import Config

PAUSE_USER = "user"
PAUSE_BREAKER = "breaker"
PAUSE_COST = "cost_limit"

OPEN: tuple[BatchStatus, ...] = ("pending", "in_progress", "paused")

TRANSITIONS: dict[str, dict[BatchStatus, BatchStatus]] = {
    # An attempt starts (from paused only as the breaker's half-open probe).
    "begin": {"pending": "in_progress", "in_progress": "in_progress", "paused": "in_progress"},
    "pause": {s: "paused" for s in OPEN},
    "resume": {"paused": "in_progress"},  # something of it ran already
    "resume_unstarted": {"paused": "pending"},  # nothing of it ran yet
    "complete": {s: "completed" for s in OPEN},  # the last feature ended, none failed
    "fail": {s: "failed" for s in OPEN},  # the last feature ended, one failed
    "cancel": {s: "cancelled" for s in OPEN},
    # ``batchctl retry``: failed features run again; an open batch keeps its status.
    "requeue": {
        "completed": "in_progress",
        "failed": "in_progress",
        "pending": "pending",
        "in_progress": "in_progress",
        "paused": "paused",
    },
}
_VERBS = {
    "pause": "pause",
    "resume": "resume",
    "resume_unstarted": "resume",
    "cancel": "cancel",
    "requeue": "retry",
}


def move(state: BatchState, event: str, now: float, reason: str | None = None) -> None:
    """Change ``state.status`` as the table says (``reason`` is the pause reason), or raise
    ``BadState`` when ``event`` does not apply to the status it has."""
    target = TRANSITIONS[event].get(state.status)
    if target is None:
        verb = _VERBS.get(event, event)
        raise BadState(f"{state.batch_id} is {state.status}; cannot {verb} it")
    state.status = target
    state.pause_reason = reason if target == "paused" else None
    state.updated_at = utc_iso(now)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The parts of the config a batch transition depends on."""

    policy: policy.RetryPolicy = field(default_factory=policy.RetryPolicy)
    breaker_pauses: bool = False
    max_cost_usd: float = 0.0


@dataclass(frozen=True)
class Step:
    """What the engine must carry out after ``Batch.record``."""

    events: tuple[AuditEvent, ...] = ()  # audit records, durable before the state
    retry_delay: float | None = None  # a retry was decided: it waits this long
    breaker_opened: bool = False  # run the on_breaker_open hook
    finished: bool = False  # run the on_batch_done hook
    paused: str | None = None  # the batch paused because of this outcome (breaker, cost_limit)
    reason: str | None = None  # the retry decision's reason code, for a failed attempt


def settings_from(cfg: Config) -> Settings:
    """The parts of the configuration the transitions need."""
    r, b = cfg.retry, cfg.breaker
    return Settings(
        policy=policy.RetryPolicy(
            max_per_feature=r.max_per_feature,
            max_global=r.max_global,
            backoff_initial=float(r.backoff_initial),
            backoff_multiplier=float(r.backoff_multiplier),
            backoff_max=float(r.backoff_max),
            jitter=r.jitter,
            max_hint_wait=float(r.max_hint_wait),
            breaker_threshold=b.threshold,
            breaker_cooldown=float(b.cooldown),
        ),
        breaker_pauses=b.on_open == "pause",
        max_cost_usd=float(cfg.limits.max_cost_usd),
    )
