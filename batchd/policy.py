"""Retry decisions, backoff and the circuit breaker (SPEC section 6). Pure.

Everything here takes values (the retry state, the failure, ``now``, a random
source) and returns values; nothing awaits, opens or sleeps, so the tests run
the whole policy in microseconds. ``after_failure`` is the heart of it:

1. counters first: ``consecutive_failures`` + 1, and the breaker opens when it
   reaches the threshold (or re-opens when a half-open probe failed);
2. then the five checks in the seed's order, each with its reason code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import msgspec

from batchd.model import AuditEvent, FailureType, RetryState, parse_iso, utc_iso

CONSENT_NOT_GIVEN = "consent_not_given"
GLOBAL_LIMIT = "global_retry_limit_reached"
BREAKER_OPEN = "circuit_breaker_open"
PERMANENT = "permanent_failure"
MAX_RETRIES = "max_retries_reached"
UNDER_LIMIT = "under_retry_limit"

BreakerPhase = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    max_per_feature: int = 3
    max_global: int = 50
    backoff_initial: float = 10.0
    backoff_multiplier: float = 2.0
    backoff_max: float = 600.0
    jitter: Literal["full", "none"] = "full"
    max_hint_wait: float = 18000.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 0.0


@dataclass(frozen=True)
class Decision:
    retry: bool
    reason: str
    retry_state: RetryState  # the new counters (a copy; the input is not changed)
    delay_s: float = 0.0
    breaker_opened: bool = False
    events: tuple[AuditEvent, ...] = ()


def breaker_phase(state: RetryState, now: float, cooldown: float) -> BreakerPhase:
    """Closed, open, or half-open (open, but the cooldown has passed: one probe may run)."""
    if not state.circuit_breaker_open:
        return "closed"
    opened = state.breaker_opened_at
    if cooldown > 0 and opened is not None and now >= parse_iso(opened) + cooldown:
        return "half_open"
    return "open"


def backoff_delay(retry_number: int, policy: RetryPolicy, rand: Callable[[], float]) -> float:
    """``initial * multiplier**(n-1)``, capped at ``backoff_max``; full jitter: [0, delay]."""
    n = max(1, retry_number)
    try:
        raw = policy.backoff_initial * math.pow(policy.backoff_multiplier, n - 1)
    except OverflowError:
        raw = math.inf
    delay = min(policy.backoff_max, raw)
    if policy.jitter == "full":
        delay = min(delay, max(0.0, rand()) * delay)
    return delay


def retry_wait(
    retry_number: int, hint_s: float | None, policy: RetryPolicy, rand: Callable[[], float]
) -> float:
    """A hint from the failure text wins (capped by ``max_hint_wait``), else backoff."""
    if hint_s is not None:
        return min(max(0.0, hint_s), policy.max_hint_wait)
    return backoff_delay(retry_number, policy, rand)


def _event(
    state: RetryState,
    now: float,
    event_type: str,
    index: int | None,
    **fields: str | None,
) -> AuditEvent:
    return msgspec.convert(
        {
            "timestamp": utc_iso(now),
            "event_type": event_type,
            "batch_id": state.batch_id,
            "feature_index": index,
            "retry_count": state.retry_counts.get(str(index), 0) if index is not None else 0,
            "global_retry_count": state.global_retry_count,
            **fields,
        },
        AuditEvent,
    )


def after_success(
    state: RetryState, now: float, cooldown: float
) -> tuple[RetryState, tuple[AuditEvent, ...]]:
    """A completed feature resets the failure run; a half-open breaker closes."""
    phase = breaker_phase(state, now, cooldown)
    if state.consecutive_failures == 0 and phase != "half_open":
        return state, ()
    new = msgspec.structs.replace(state, consecutive_failures=0, updated_at=utc_iso(now))
    if phase == "half_open":
        new = msgspec.structs.replace(new, circuit_breaker_open=False, breaker_opened_at=None)
        ev = _event(new, now, "circuit_breaker_reset", None, reason="half_open_probe_succeeded")
        return new, (ev,)
    return new, ()


def after_failure(
    state: RetryState,
    *,
    index: int,
    failure_type: FailureType,
    message: str,
    consent: bool,
    hint_s: float | None,
    policy: RetryPolicy,
    now: float,
    rand: Callable[[], float],
) -> Decision:
    """Update the counters for a failed attempt, then decide whether to retry it."""
    new, opened, events = _count_failure(state, index, message, policy, now)
    tries = new.retry_counts.get(str(index), 0)
    reason = retry_reason(new, consent, failure_type, tries, policy)
    retry = reason == UNDER_LIMIT
    delay = 0.0
    if retry:
        delay = retry_wait(tries + 1, hint_s, policy, rand)
        new = msgspec.structs.replace(
            new,
            retry_counts={**new.retry_counts, str(index): tries + 1},
            global_retry_count=new.global_retry_count + 1,
            next_attempt_at=utc_iso(now + delay),
        )
    fields = {"failure_type": failure_type, "error_message": message}
    decision = "retry" if retry else "fail"
    events.append(
        _event(new, now, "retry_decision", index, decision=decision, reason=reason, **fields)
    )
    if retry:
        when = f"next attempt at {new.next_attempt_at} (in {delay:.1f}s)"
        events.append(
            _event(new, now, "retry_attempt", index, decision="retry", reason=when, **fields)
        )
    return Decision(retry, reason, new, delay, opened, tuple(events))


def _count_failure(
    state: RetryState, index: int, message: str, policy: RetryPolicy, now: float
) -> tuple[RetryState, bool, list[AuditEvent]]:
    """Counters first: one more failure in a row; the breaker opens at the threshold (or
    again when its half-open probe failed). Returns the new state, opened?, audit events."""
    stamp = utc_iso(now)
    phase = breaker_phase(state, now, policy.breaker_cooldown)
    new = msgspec.structs.replace(
        state,
        retry_counts=dict(state.retry_counts),
        consecutive_failures=state.consecutive_failures + 1,
        next_attempt_at=None,
        updated_at=stamp,
    )
    threshold = phase == "closed" and new.consecutive_failures >= policy.breaker_threshold
    if phase != "half_open" and not threshold:
        return new, False, []
    new = msgspec.structs.replace(new, circuit_breaker_open=True, breaker_opened_at=stamp)
    why = "half_open_probe_failed" if phase == "half_open" else "consecutive_failures"
    event = _event(new, now, "circuit_breaker_triggered", index, reason=why, error_message=message)
    return new, True, [event]


def retry_reason(
    state: RetryState, consent: bool, failure_type: FailureType, tries: int, policy: RetryPolicy
) -> str:
    """The five checks, in the seed's order; ``under_retry_limit`` means retry."""
    if not consent:
        return CONSENT_NOT_GIVEN
    if state.global_retry_count >= policy.max_global:
        return GLOBAL_LIMIT
    if state.circuit_breaker_open:
        return BREAKER_OPEN
    if failure_type == "permanent":
        return PERMANENT
    if tries >= policy.max_per_feature:
        return MAX_RETRIES
    return UNDER_LIMIT


def reset_breaker(state: RetryState, now: float) -> tuple[RetryState, AuditEvent]:
    """``batchctl reset-breaker``: close at once, zero the failure run."""
    new = msgspec.structs.replace(
        state,
        circuit_breaker_open=False,
        breaker_opened_at=None,
        consecutive_failures=0,
        updated_at=utc_iso(now),
    )
    return new, _event(new, now, "circuit_breaker_reset", None, reason="manual_reset")


def parse_consent(value: str | None) -> bool | None:
    """``true/1/yes/y`` or ``false/0/no/n`` in any case; anything else is unset."""
    if value is None:
        return None
    v = value.strip().strip("\"'").lower()
    if v in ("true", "1", "yes", "y"):
        return True
    if v in ("false", "0", "no", "n"):
        return False
    return None


def consent_from_dotenv(text: str) -> bool | None:
    """The last ``BATCH_RETRY_ENABLED=`` line of a ``.env`` file, if any."""
    found: bool | None = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, sep, value = line.partition("=")
        if sep and key.strip() == "BATCH_RETRY_ENABLED":
            value = value.split(" #", 1)[0]
            parsed = parse_consent(value)
            if parsed is not None:
                found = parsed
    return found


def consent(env_value: str | None, dotenv: bool | None, saved: bool | None) -> bool:
    """Is automatic retry on? ``BATCH_RETRY_ENABLED`` in the daemon's environment wins, then
    the same key in the ``.env`` of the batch's cwd, then ``user_state.json``; else off."""
    for value in (parse_consent(env_value), dotenv, saved):
        if value is not None:
            return value
    return False
