"""Usage-limit waits, per runner profile (SPEC 13). Pure.

An agent's usage limit is nobody's failure: the profile that hit it waits
until the reset (plus ``limits.reset_margin``), or ``limits.probe_interval``
when the text named no reset time; batches on other profiles go on. When the
wait has passed, one feature of the profile runs (the probe): if it is
limited again a new wait begins, anything else ends the wait. A reset further
away than ``limits.max_limit_wait`` pauses the profile's batches instead.

The waits live in ``daemon.json`` (``limit_waits``: profile -> ``LimitWait``)
so a restart keeps them. Functions here take the waits and ``now`` and return
what changes; the caller stores it, audits it and runs the hook.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from batchd.model import AuditEvent, LimitWait, parse_iso, utc_iso

PAUSE_USAGE_LIMIT = "usage_limit"
PAUSE_LOGIN = "agent_login"
END_RESET_PASSED = "reset_passed"
END_CLEARED = "cleared"


@dataclass(frozen=True)
class LimitRules:
    """``[limits]``: the margin after a reset, the wait without one, the longest wait."""

    reset_margin: float = 120.0
    probe_interval: float = 1800.0
    max_limit_wait: float = 691200.0


@dataclass(frozen=True)
class Hit:
    """What a limited attempt of ``profile`` leads to: a wait, or a pause of its batches."""

    profile: str
    wait: LimitWait | None  # the wait from now on (None: pause instead)
    began: bool  # a new wait (not one made longer): audit it and run hooks.on_limit
    pause_reason: str | None = None  # the reset is too far away: pause the profile's batches


def on_limited(
    waits: Mapping[str, LimitWait],
    profile: str,
    *,
    reset_at: float | None,
    message: str,
    now: float,
    rules: LimitRules,
) -> Hit:
    """A ``limited`` attempt of ``profile`` ended at ``now``; ``reset_at`` is when the agent
    said its limit resets (epoch seconds), None when it did not say."""
    if reset_at is None:
        until = now + rules.probe_interval
    else:
        until = max(now, reset_at) + rules.reset_margin
    if until - now > rules.max_limit_wait:
        reason = (
            f"{PAUSE_USAGE_LIMIT}: {profile}'s usage limit resets at {utc_iso(until)}, more than "
            f"limits.max_limit_wait ({rules.max_limit_wait:g} s) away: {message}"
        )
        return Hit(profile, None, began=False, pause_reason=reason)
    old = waits.get(profile)
    if old is not None and parse_iso(old.until) > now:
        # Still waiting (two slots of one profile both hit it): the later reset counts.
        later = max(until, parse_iso(old.until))
        wait = LimitWait(until=utc_iso(later), since=old.since, message=message)
        return Hit(profile, wait, began=False)
    wait = LimitWait(until=utc_iso(until), since=utc_iso(now), message=message)
    return Hit(profile, wait, began=True)


def blocked_until(waits: Mapping[str, LimitWait], profile: str, now: float) -> float | None:
    """Nothing of ``profile`` starts before this (epoch seconds); None when it may start."""
    wait = waits.get(profile)
    if wait is None:
        return None
    until = parse_iso(wait.until)
    return until if until > now else None


def probing(waits: Mapping[str, LimitWait], now: float) -> frozenset[str]:
    """Profiles whose wait has passed but not ended: one feature at a time (the probe)."""
    return frozenset(p for p, w in waits.items() if parse_iso(w.until) <= now)


def ends_after(waits: Mapping[str, LimitWait], profile: str, now: float) -> bool:
    """An attempt of ``profile`` ended with anything but ``limited``: does that end its wait?
    Only a wait that has passed (that attempt was the probe) ends so."""
    wait = waits.get(profile)
    return wait is not None and parse_iso(wait.until) <= now


def clear(waits: Mapping[str, LimitWait], profile: str | None) -> list[str]:
    """``batchctl limit --clear [RUNNER]``: the profiles whose wait ends now."""
    if profile is None:
        return sorted(waits)
    return [profile] if profile in waits else []


def event(
    kind: str,
    *,
    batch_id: str,
    now: float,
    wait: LimitWait | None = None,
    reason: str | None = None,
    feature_index: int | None = None,
) -> AuditEvent:
    """The audit record of a wait that begins (``usage_limit_wait``) or ends
    (``usage_limit_end`` with ``reason``), for one batch of the profile."""
    if kind == "usage_limit_wait":
        assert wait is not None
        return AuditEvent(
            timestamp=utc_iso(now),
            event_type="usage_limit_wait",
            batch_id=batch_id,
            feature_index=feature_index,
            decision="wait",
            until=wait.until,
            error_message=wait.message,
        )
    return AuditEvent(
        timestamp=utc_iso(now),
        event_type="usage_limit_end",
        batch_id=batch_id,
        feature_index=feature_index,
        decision="go_on",
        reason=reason,
    )


def in_words(profile: str, wait: LimitWait, now: float, local: str) -> str:
    """``waiting for claude's usage limit: resets 22:00 (until 2026-12-05T22:02:00Z), in
    3 h 12 min``; ``local`` is the until time as the reader's clock shows it."""
    left = parse_iso(wait.until) - now
    when = f"in {duration(left)}" if left > 0 else "the probe runs next"
    return f"waiting for {profile}'s usage limit: until {local}, {when}"


def duration(seconds: float) -> str:
    """``3 h 12 min``, ``12 min``, ``45 s``, ``2 d 17 h``: a wait in words."""
    s = max(0, int(seconds + 0.5))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def affected(batches: Iterable[tuple[str, str, bool]], profile: str) -> list[str]:
    """The ids of the unfinished batches on ``profile``, from (id, profile, finished)."""
    return [bid for bid, p, finished in batches if p == profile and not finished]
