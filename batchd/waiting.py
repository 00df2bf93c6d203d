"""The agent's usage limit and login, a stage of a feature's life (SPEC 13).

A ``limited`` attempt is nobody's failure: its runner profile waits (the wait
is decided by ``limitwait`` and kept in ``daemon.json``), its batches are
told in their audit, and ``hooks.on_limit`` runs; a reset too far away
pauses the profile's batches instead. The first attempt of a profile after
its wait (the probe) ends the wait with any other outcome. An agent that is
not logged in pauses the profile's batches (``agent_login``) with the help
the verdict carries, uncharged. ``limit --clear`` ends waits by hand.

What it must never do: charge an attempt, touch the breaker, or decide the
wait itself (that is ``limitwait``).
"""

from __future__ import annotations

import logging
from typing import Protocol

from batchd import limitwait
from batchd.batch import Batch
from batchd.classify import Verdict
from batchd.clock import Clock
from batchd.live import Live
from batchd.model import AuditEvent, LimitWait
from batchd.rules import Rules

log = logging.getLogger("batchd")


class WaitHost(Protocol):
    """What the usage-limit stage is given (a part of ``feature.Host``)."""

    live: Live
    clock: Clock

    @property
    def rules(self) -> Rules: ...

    def persist(self, batch: Batch, events: tuple[AuditEvent, ...] = ()) -> bool: ...

    def save_queue(self) -> bool: ...

    async def limit_hook(self, batch: Batch, profile: str, wait: LimitWait) -> None: ...


def _profile_batches(live: Live, profile: str) -> list[Batch]:
    return [b for b in live.batches.values() if b.state.runner == profile and not b.finished]


def probe_end(host: WaitHost, batch: Batch, index: int, verdict: Verdict) -> AuditEvent | None:
    """When this outcome ends its profile's wait (the probe ran, and was not limited again):
    the ``usage_limit_end`` of the probe's own batch, written with the outcome itself."""
    now = host.clock.now()
    if verdict.outcome in ("limited", "interrupted") or not limitwait.ends_after(
        host.live.queue.limit_waits, batch.state.runner, now
    ):
        return None
    return limitwait.event(
        "usage_limit_end",
        batch_id=batch.batch_id,
        now=now,
        reason=limitwait.END_RESET_PASSED,
        feature_index=index,
    )


async def after_outcome(
    host: WaitHost, batch: Batch, index: int, verdict: Verdict, probe_ended: bool = False
) -> None:
    """The attempt of ``batch`` is recorded: a limit starts (or extends) its profile's wait;
    the probe's outcome (``probe_ended``: recorded with its ``probe_end``) ends it."""
    if verdict.outcome == "limited":
        await _limited(host, batch, index, verdict, host.clock.now())
    elif probe_ended:
        end(host, batch.state.runner, limitwait.END_RESET_PASSED, audited=batch)


async def _limited(host: WaitHost, batch: Batch, index: int, verdict: Verdict, now: float) -> None:
    live, profile = host.live, batch.state.runner
    message = verdict.message or "the agent's usage limit is reached"
    hit = limitwait.on_limited(
        live.queue.limit_waits,
        profile,
        reset_at=verdict.limit_until,
        message=message,
        now=now,
        rules=host.rules.limits,
    )
    if hit.wait is None:
        assert hit.pause_reason is not None
        pause_profile(host, profile, hit.pause_reason)
        return
    live.queue.limit_waits[profile] = hit.wait
    host.save_queue()
    if not hit.began:
        log.info(
            "%s: %s's usage limit again; the wait goes on until %s",
            batch.batch_id,
            profile,
            hit.wait.until,
        )
        live.touch()
        return
    log.warning(
        "%s: feature %d: %s's usage limit is reached (%s); nothing of %s starts until %s",
        batch.batch_id,
        index + 1,
        profile,
        message,
        profile,
        hit.wait.until,
    )
    for b in _profile_batches(live, profile):
        feature = index if b is batch else None
        ev = limitwait.event(
            "usage_limit_wait", batch_id=b.batch_id, now=now, wait=hit.wait, feature_index=feature
        )
        host.persist(b, (ev,))
    live.touch()
    await host.limit_hook(batch, profile, hit.wait)


def end(host: WaitHost, profile: str, reason: str, audited: Batch | None = None) -> None:
    """End ``profile``'s wait now (``reset_passed``: its probe ran; ``cleared``: by hand),
    audited in each batch of the profile (but ``audited``, the probe's: its outcome was)."""
    live = host.live
    if live.queue.limit_waits.pop(profile, None) is None:
        return
    host.save_queue()
    now = host.clock.now()
    for b in _profile_batches(live, profile):
        if b is audited:
            continue
        ev = limitwait.event("usage_limit_end", batch_id=b.batch_id, now=now, reason=reason)
        host.persist(b, (ev,))
    log.info("%s's usage-limit wait ended (%s)", profile, reason)
    live.touch()


def pause_profile(host: WaitHost, profile: str, reason: str) -> list[str]:
    """Pause every unfinished batch of ``profile`` (not paused yet) with ``reason``."""
    now = host.clock.now()
    paused = []
    for b in _profile_batches(host.live, profile):
        if b.state.status == "paused":
            continue
        b.pause(now, reason)
        host.persist(b)
        paused.append(b.batch_id)
    if paused:
        log.error("%s paused: %s", ", ".join(paused), reason)
    host.live.touch()
    return paused


def login_pause_reason(verdict: Verdict, profile: str) -> str:
    """``agent_login: ...``: the profile, and how to log in (the verdict's help)."""
    help_text = verdict.message or "the agent is not logged in"
    then = "then `batchctl resume --all`"
    return f"{limitwait.PAUSE_LOGIN}: runner profile {profile!r}: {help_text}; {then}"
